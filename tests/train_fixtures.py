"""A small synthetic InF-IR release (tests and benchmarks only; not a corpus).

A world of dishes x cooking methods. Row (dish d, method m):
Q+ "How should I prepare d?", I+ "use m", P+ = passage(d, m); I- "use m'", HN1 = passage(d, m');
Q- "How should I prepare d'?", HN2 = passage(d', m). Several rows share Q+ with different I+,
so ranking P+ first needs the instruction: a query-only model cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_synthetic_release", "synthetic_rows", "MINED_TYPE"]

MINED_TYPE = pa.list_(
    pa.struct(
        [
            ("passage_id", pa.string()),
            ("text", pa.string()),
            ("score", pa.float64()),
            ("rank", pa.int32()),
            ("method", pa.string()),
        ]
    )
)

DISHES = [
    "salmon fillets", "chicken thighs", "potatoes", "aubergine", "tofu", "pork ribs",
    "cauliflower", "lamb chops", "mushrooms", "sweet corn", "prawns", "beef brisket",
    "carrots", "duck breast", "halloumi", "courgettes", "sea bass", "chickpeas",
    "pumpkin", "venison",
]
METHODS = {
    "grilling": "put them on a hot charcoal grill, turn once, and let the flames char the outside",
    "steaming": "set them in a bamboo basket over simmering water with the lid on until tender",
    "deep frying": "lower them into oil heated to 180 degrees and fry until golden and crisp",
    "slow braising": "cover them with stock and wine in a heavy pot and braise for hours in a low oven",
    "smoking": "hang them in a smoker over hickory chips and keep the smoke cool for a long time",
    "poaching": "slide them into barely simmering milk or broth and keep the liquid just below a boil",
}
PAD = (
    " Season well, taste as you go, and rest the food briefly before serving so the texture settles"
    " and the flavours come together on the plate."
)


def _passage(dish: str, method: str, pad: int) -> str:
    text = f"To prepare {dish} by {method}, {METHODS[method]}."
    return text + PAD * pad


def _pid(text: str) -> str:
    return "p" + hashlib.sha256(text.encode()).hexdigest()[:12]


def synthetic_rows(n_rows: int, seed: int = 0, split: str = "train", pad: int = 0) -> list[dict]:
    """``n_rows`` rows over distinct (dish, method) combinations, deterministic for a seed.

    ``pad`` appends a ~30-word filler sentence that many times to every passage (benchmarks).
    """
    rng = random.Random(seed)
    methods = list(METHODS)
    combos = [(d, m) for d in DISHES for m in methods]
    rng.shuffle(combos)
    if n_rows > len(combos):
        raise ValueError(f"at most {len(combos)} synthetic rows")
    rows = []
    for dish, method in combos[:n_rows]:
        m2 = rng.choice([m for m in methods if m != method])
        d2 = rng.choice([d for d in DISHES if d != dish])
        pos = _passage(dish, method, pad)
        hn1 = _passage(dish, m2, pad)
        hn2 = _passage(d2, method, pad)
        mined = []
        for rank, (md, mm) in enumerate(
            [(x, y) for x, y in [(rng.choice(DISHES), rng.choice(methods)) for _ in range(4)] if x != dish], 1
        ):
            t = _passage(md, mm, pad)
            mined.append({"passage_id": _pid(t), "text": t, "score": 1.0 / rank, "rank": rank, "method": "bm25"})
        q = f"How should I prepare {dish}?"
        rid = hashlib.sha256(f"{q}|{method}|{pos}".encode()).hexdigest()[:16]
        rows.append(
            {
                "id": rid,
                "source": "synthetic",
                "query_id": "q" + hashlib.sha256(q.encode()).hexdigest()[:8],
                "passage_id": _pid(pos),
                "query_positive": q,
                "instruction_positive": f"I only want a recipe that uses {method}.",
                "document_positive": pos,
                "instruction_negative": f"I only want a recipe that uses {m2}.",
                "hard_negative_document_1": hn1,
                "query_negative": f"How should I prepare {d2}?",
                "hard_negative_document_2": hn2,
                "mined_negatives": mined,
                "split": split,
            }
        )
    return rows


def write_synthetic_release(
    release_dir: str | Path,
    n_train: int = 12,
    n_test: int = 12,
    n_validation: int = 0,
    seed: int = 0,
    pad: int = 0,
    shards: int = 1,
) -> Path:
    """Write ``release_dir/data/<split>-NNNNN-of-NNNNN.parquet`` for train / validation / test.

    Splits take disjoint (dish, method) combinations from one shuffled list.
    """
    root = Path(release_dir)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    total = n_train + n_test + n_validation
    all_rows = synthetic_rows(total, seed=seed, pad=pad)
    parts = {
        "train": all_rows[:n_train],
        "test": all_rows[n_train : n_train + n_test],
        "validation": all_rows[n_train + n_test :],
    }
    for split, rows in parts.items():
        if not rows:
            continue
        for r in rows:
            r["split"] = split
        k = max(1, min(shards, len(rows)))
        per = -(-len(rows) // k)
        for i in range(k):
            chunk = rows[i * per : (i + 1) * per]
            table = pa.Table.from_pylist(
                chunk,
                schema=pa.schema(
                    [(c, pa.string()) for c in chunk[0] if c != "mined_negatives"] + [("mined_negatives", MINED_TYPE)]
                ),
            )
            pq.write_table(table, data / f"{split}-{i:05d}-of-{k:05d}.parquet")
    return root
