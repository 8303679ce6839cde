"""DocStore reads rows chunk by chunk (bench: ChunkedArray.take copied the whole column per call);
the values must still come back in the order asked, duplicates included."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.retrieval.collection import DocStore, DocStoreWriter


def test_texts_and_ids_follow_the_requested_order_across_chunks(tmp_path):
    w = DocStoreWriter(tmp_path / "docs")
    ids, texts = [], []
    for start, n in ((0, 5), (5, 1), (6, 7), (13, 4)):  # uneven chunks, one of a single row
        pid = [f"p{i}" for i in range(start, start + n)]
        txt = [f"text of passage {i}" for i in range(start, start + n)]
        w.add(pa.array(pid), pa.array([""] * n), pa.array(txt))
        ids += pid
        texts += txt
    w.finish("fp")
    store = DocStore(tmp_path / "docs")
    assert store._text.num_chunks == 4
    rows = np.array([16, 0, 5, 5, 12, 3, 6, 16, 1])
    assert store.texts(rows) == [texts[r] for r in rows]
    assert store.ids(rows) == [ids[r] for r in rows]
    assert store.texts(np.zeros(0, np.int64)) == []
    with pytest.raises(IndexError):
        store.texts(np.array([17]))
