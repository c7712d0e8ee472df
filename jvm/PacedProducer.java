// The bench's load generator for its fixed-rate phases: Kafka's own Java client, run as a
// single-file program (`java -cp <kafka jars> PacedProducer.java ...`, nothing to build).
// kafka-python took ~0.3 of a core at 2,000 records/s (its sender thread and the send loop)
// on the two cores the job is measured on; this client ~0.12 (after its start).
//
// Arguments: bootstrap servers, topic, rate (records/s), input file, output file, and an
// optional client properties file. Input: one record per line, "id<TAB>key<TAB>value"
// (UTF-8; the value is the record's JSON). Output: "id<TAB>sent_ms" per record, sent_ms the
// wall-clock time right before the send (the moment the bench's latency counts from).
// Records are paced on a schedule (record i due at start + i / rate), not by sleeping a
// fixed gap, so a late record does not push back the ones after it.

import java.io.BufferedWriter;
import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.locks.LockSupport;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class PacedProducer {
    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: PacedProducer BOOTSTRAP TOPIC RATE IN OUT [PROPERTIES]");
            System.exit(2);
        }
        String topic = args[1];
        double rate = Double.parseDouble(args[2]);
        List<String[]> records = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[3]), StandardCharsets.UTF_8)) {
            if (!line.isEmpty()) {
                records.add(line.split("\t", 3));
            }
        }
        Properties props = new Properties();
        if (args.length > 5) {
            try (InputStream in = new FileInputStream(args[5])) {
                props.load(in);
            }
        }
        props.put("bootstrap.servers", args[0]);
        props.putIfAbsent("acks", "1");
        props.putIfAbsent("linger.ms", "5");
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        long[] sent = new long[records.size()];
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            producer.partitionsFor(topic); // metadata before the clock starts
            long start = System.nanoTime();
            for (int i = 0; i < records.size(); i++) {
                if (rate > 0) {
                    long due = start + (long) (i * 1e9 / rate);
                    long wait;
                    while ((wait = due - System.nanoTime()) > 0) {
                        LockSupport.parkNanos(wait);
                    }
                }
                String[] r = records.get(i);
                sent[i] = System.currentTimeMillis();
                producer.send(new ProducerRecord<>(topic, r[1].getBytes(StandardCharsets.UTF_8),
                        r[2].getBytes(StandardCharsets.UTF_8)));
            }
            producer.flush();
        }
        try (BufferedWriter out = Files.newBufferedWriter(Path.of(args[4]),
                StandardCharsets.UTF_8)) {
            for (int i = 0; i < records.size(); i++) {
                out.write(records.get(i)[0] + "\t" + sent[i] + "\n");
            }
        }
    }
}
