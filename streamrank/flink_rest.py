"""The REST API of a Flink cluster, as streamrank uses it: readiness, jobs and their state,
restarts, operator metrics, stop with savepoint, cancel."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


# Job states a job does not leave (it has stopped, one way or another).
TERMINAL_STATES = ("FINISHED", "CANCELED", "FAILED")


class ClusterError(RuntimeError):
    pass


@dataclass
class JobInfo:
    job_id: str
    name: str
    state: str


class FlinkRest:
    """Calls on ``rest`` (the REST base URL); ``log_dir`` is named in errors."""

    rest: str
    log_dir: object


    def _get(self, path: str, timeout: float = 5) -> dict:
        with urllib.request.urlopen(self.rest + path, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def _post(self, path: str, body: dict, timeout: float = 10) -> dict:
        req = urllib.request.Request(self.rest + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode() or "{}")

    def answers(self) -> bool:
        try:
            self._get("/overview", timeout=2)
            return True
        except (OSError, ValueError):
            return False

    def overview(self) -> dict:
        return self._get("/overview")

    def wait_ready(self, taskmanagers: int, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                ov = self.overview()
                if ov.get("taskmanagers", 0) >= taskmanagers:
                    return
                last = f"{ov.get('taskmanagers', 0)} of {taskmanagers} TaskManagers registered"
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"cluster not ready after {wait_s:.0f}s ({last}); logs in "
                           f"{self.log_dir}")

    def jobs(self) -> list[JobInfo]:
        return [JobInfo(j["jid"], j["name"], j["state"])
                for j in self._get("/jobs/overview").get("jobs", [])]

    def job(self, job_id: str) -> dict:
        return self._get(f"/jobs/{job_id}")

    def job_state(self, job_id: str) -> str:
        return self.job(job_id)["state"]

    def restarts(self, job_id: str) -> int:
        """How many times the job failed and was restarted: Flink's ``numRestarts``, or the
        length of its exception history when that is larger (with region failover a lost
        TaskManager may restart regions without counting in ``numRestarts``)."""
        rows = self._get(f"/jobs/{job_id}/metrics?get=numRestarts")
        counted = int(float(rows[0]["value"])) if rows and "value" in rows[0] else 0
        history = self._get(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {})
        return max(counted, len(history.get("entries", [])))

    def running_since(self, job_id: str) -> bool:
        """True when the job and all its tasks are RUNNING."""
        info = self.job(job_id)
        return info["state"] == "RUNNING" and all(
            v["status"] == "RUNNING" for v in info.get("vertices", []))

    def wait_job_running(self, job_id: str, wait_s: float = 120) -> None:
        deadline = time.monotonic() + wait_s
        state = "?"
        while time.monotonic() < deadline:
            try:
                state = self.job_state(job_id)
                if state == "RUNNING" and self.running_since(job_id):
                    return
                if state in TERMINAL_STATES:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"job {job_id} is {state}, not RUNNING after {wait_s:.0f}s; "
                           f"logs in {self.log_dir}")

    def operator_metrics(self, job_id: str, prefix: str = "streamrank.") -> dict[str, float]:
        """Our metric values, summed over subtasks, per ``<operator>.<metric>``."""
        out: dict[str, float] = {}
        for v in self.job(job_id).get("vertices", []):
            names = self._get(f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics")
            ids = [m["id"] for m in names if prefix in m["id"]]
            if not ids:
                continue
            got = self._get(f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics?get="
                            + ",".join(ids) + "&agg=sum")
            for m in got:
                out[m["id"]] = float(m.get("sum", 0))
        return out

    def job_page_url(self, job_id: str) -> str:
        """The job's page (graph and vertices) in the Flink web UI."""
        return f"{self.rest}/#/job/running/{job_id}/overview"

    def stop_with_savepoint(self, job_id: str, target_dir: str, wait_s: float = 120) -> str:
        """Stop the job with a savepoint (Kafka transactions committed); returns its path once
        the job has stopped (the savepoint completes a moment before the job leaves RUNNING:
        a job started from it right away could find the old one still holding its slots)."""
        trigger = self._post(f"/jobs/{job_id}/stop",
                             {"targetDirectory": target_dir, "drain": False})["request-id"]
        deadline = time.monotonic() + wait_s
        location = None
        while time.monotonic() < deadline:
            if location is None:
                st = self._get(f"/jobs/{job_id}/savepoints/{trigger}")
                if st["status"]["id"] == "COMPLETED":
                    op = st.get("operation", {})
                    if "location" not in op:
                        raise ClusterError(f"savepoint failed: {op.get('failure-cause')}")
                    location = op["location"]
            if location is not None and self.job_state(job_id) in TERMINAL_STATES:
                return location
            time.sleep(0.5)
        if location is None:
            raise ClusterError(f"savepoint of {job_id} not complete after {wait_s:.0f}s")
        raise ClusterError(f"savepoint {location} taken, but job {job_id} still "
                           f"{self.job_state(job_id)} after {wait_s:.0f}s")

    def cancel(self, job_id: str) -> None:
        req = urllib.request.Request(f"{self.rest}/jobs/{job_id}?mode=cancel", method="PATCH")
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
