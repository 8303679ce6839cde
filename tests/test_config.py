import tomllib

import pytest

from conftest import REPO, make_config, run_infir
from pipeline.config import load_config, to_toml
from pipeline.errors import InfirError


def test_unknown_key_is_rejected_naming_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nformat = "beir"\nsampel_queries = 5\n')
    with pytest.raises(InfirError, match=r"unknown key 'source.sampel_queries'"):
        load_config(bad)


def test_wrong_type_is_rejected_naming_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nsample_queries = "many"\n')
    with pytest.raises(InfirError, match=r"'source.sample_queries'"):
        load_config(bad)


def test_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n")
    with pytest.raises(InfirError, match=r"bad.toml: invalid TOML"):
        load_config(bad)


def test_overrides_apply_and_effective_config_round_trips(tmp_path):
    cfg = make_config(**{"source.sample_queries": 7, "llm.concurrency": 3, "mine.retrieval.num_negatives": 4})
    assert cfg.source.sample_queries == 7 and cfg.llm.concurrency == 3
    text = to_toml(cfg)
    path = tmp_path / "eff.toml"
    path.write_text(text)
    again = load_config(path)
    assert again.source.sample_queries == 7
    assert again.mine.retrieval.num_negatives == 4
    assert tomllib.loads(text)["llm"]["concurrency"] == 3


def test_cli_set_override_with_bad_key_is_one_line_error(tmp_path):
    code, out, err = run_infir("source", "--config", str(REPO / "configs/sample.toml"), "--set", "source.nope=1")
    assert code == 2
    assert "unknown key 'source.nope'" in err
    assert "Traceback" not in err
