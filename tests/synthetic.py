"""A small MovieLens-layout dataset with clear structure, for eval and parity tests."""

from __future__ import annotations

import random
from pathlib import Path

from streamrank.replay import write_movielens

GENRE_WORDS = {
    "Horror": ["haunted", "ghost", "demon", "zombie", "vampire", "curse", "crypt", "witch"],
    "Romance": ["wedding", "love letter", "kiss", "honeymoon", "valentine", "bride", "date",
                "sweetheart"],
    "Western": ["sheriff", "outlaw", "saloon", "gunslinger", "ranch", "cowboy", "posse",
                "stagecoach"],
}


def write_dataset(root: Path, users_per_genre: int = 8, ratings_per_user: int = 10,
                  seed: int = 7) -> Path:
    """movies.csv, ratings.csv, tags.csv: each user mostly rates one genre, high; a little
    noise; timestamps interleave users."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    movies, by_genre = [], {}
    mid = 1
    for genre, words in GENRE_WORDS.items():
        for w in words:
            movies.append((mid, f"The {w.title()} ({1980 + mid % 20})", genre))  # (before 2001)
            by_genre.setdefault(genre, []).append(mid)
            mid += 1
    ratings = []
    uid = 1
    for genre in GENRE_WORDS:
        for _ in range(users_per_genre):
            own = rng.sample(by_genre[genre], min(ratings_per_user - 2, len(by_genre[genre])))
            other = rng.sample([m for g, ms in by_genre.items() if g != genre for m in ms], 2)
            for m in own:
                ratings.append([uid, m, rng.choice([4.0, 4.5, 5.0])])
            for m in other:
                ratings.append([uid, m, rng.choice([1.0, 2.0])])
            uid += 1
    rng.shuffle(ratings)
    for i, r in enumerate(ratings):
        r.append(1_000_000_000 + 60 * i)
    write_movielens(root, movies, ratings)
    return root
