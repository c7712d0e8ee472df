"""Synthesise a second MovieLens-layout dataset for ``streamrank eval --data DIR``.

Unlike ml-latest-small, items arrive over time (an item can only be rated after its release,
so fresh items are always cold) and tastes follow the text: each item belongs to a genre whose
words make its title and tags, each user likes one or two genres. Users rate in bursts, mostly
released items of their genres (popular ones more often), sometimes anything popular; ratings
of their own genres are high, the rest low or neutral.

    python scripts/synth_dataset.py --out .run/synth [--users 600 --items 3000 --ratings 60000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrank.replay import write_movielens  # noqa: E402

GENRES = {
    "Horror": "haunted ghost demon zombie vampire curse crypt witch asylum nightmare",
    "Romance": "wedding love kiss honeymoon valentine bride sweetheart proposal heart date",
    "Western": "sheriff outlaw saloon gunslinger ranch cowboy posse stagecoach frontier gold",
    "Animation": "cartoon puppy princess dragon toy bunny fairy penguin kitten robot",
    "Sci-Fi": "galaxy starship alien android planet laser cyborg wormhole orbit mars",
    "War": "battalion trench sniper platoon siege bomber general invasion front medal",
    "Crime": "heist detective mob gangster con alibi witness robbery cartel informant",
    "Sport": "champion boxer pitcher stadium rookie coach marathon playoff racer trophy",
}


def synthesise(users: int, items: int, ratings: int, seed: int):
    rng = random.Random(seed)
    genres = list(GENRES)
    movies, released, by_genre = [], [], {g: [] for g in genres}
    for mid in range(1, items + 1):
        g = rng.choice(genres)
        words = rng.sample(GENRES[g].split(), 2)
        released.append(rng.random())  # release time, as a fraction of the timeline
        # (the calendar year of the release, on the ratings' clock below: the replay makes
        # January 1 of it the item's publication time)
        year = time.gmtime(1_000_000_000 + int(released[-1] * 300_000_000)).tm_year
        movies.append((mid, f"The {words[0].title()} {words[1].title()} ({year})", g))
        by_genre[g].append(mid)
    weight = {mid: 1.0 / (1 + rng.random() * 50) for mid in range(1, items + 1)}  # appeal
    taste = {u: rng.sample(genres, rng.choice((1, 1, 2))) for u in range(1, users + 1)}
    rows, tags, t = [], [], 0.0
    seen: dict[int, set] = {u: set() for u in taste}
    while len(rows) < ratings:
        u = rng.randint(1, users)
        t = min(t + rng.random() * 13.0 / ratings, 1.0)  # ~6.5 ratings a burst
        for _ in range(rng.randint(1, 12)):  # a burst
            own = rng.random() < 0.8
            pool = [m for g in (taste[u] if own else genres) for m in by_genre[g]
                    if released[m - 1] <= t and m not in seen[u]]
            if not pool:
                break
            m = rng.choices(pool, weights=[weight[x] for x in pool])[0]
            seen[u].add(m)
            liked = movies[m - 1][2] in taste[u]
            value = rng.choice((4.0, 4.5, 5.0)) if liked else rng.choice((1.0, 2.0, 3.0))
            ts = 1_000_000_000 + int(t * 300_000_000) + len(rows)
            rows.append([u, m, value, ts])
            if rng.random() < 0.05:
                tags.append([u, m, movies[m - 1][1].split()[1].lower(), ts])
    return movies, rows[:ratings], tags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".run/synth")
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--ratings", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    movies, rows, tags = synthesise(args.users, args.items, args.ratings, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_movielens(out, movies, rows, tags)
    print(f"{out}: {len(movies)} items, {len(rows)} ratings, {len(tags)} tags")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
