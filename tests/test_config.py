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


# ---- settings the service would refuse, prices in the config (issue #26 points 4 and 5) ---------------


def test_reasoning_effort_the_model_refuses_is_refused_at_load_naming_the_key():
    with pytest.raises(InfirError) as e:
        make_config(**{"verify.reasoning_effort": "minimal"})  # the judge is o3-mini
    msg = str(e.value)
    assert "'verify.reasoning_effort'" in msg and "o3-mini" in msg and "low, medium or high" in msg and "\n" not in msg
    assert make_config(**{"verify.model": "gpt-5-mini", "verify.reasoning_effort": "minimal"}).verify.reasoning_effort == "minimal"
    with pytest.raises(InfirError, match=r"'verify.reasoning_effort': o9-mini \(not a model infir knows: assumed an o-series"):
        make_config(**{"verify.model": "o9-mini", "verify.reasoning_effort": "minimal"})
    with pytest.raises(InfirError, match=r"'verify.reasoning_effort': gpt-5.1 .* not 'minimal'"):
        make_config(**{"verify.model": "gpt-5.1", "verify.reasoning_effort": "minimal"})
    # A model that could serve no infir request (no system message, no json_schema) names its key.
    for key in ("generate.model", "mine.model", "verify.model", "verify.first_model"):
        with pytest.raises(InfirError, match=rf"'{key}': o1-mini takes no system message"):
            make_config(**{key: "o1-mini"})


def test_cli_refuses_minimal_effort_for_o3_mini_before_any_request(tmp_path):
    from openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        code, out, err = run_infir("build", "--backend", "openai", "--set", f"source.path={REPO / 'data/sample'}",
                                   "--set", f"llm.base_url={srv.base_url}", "--set", "verify.reasoning_effort=minimal",
                                   env={"OPENAI_API_KEY": "sk-test-effort"})
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "'verify.reasoning_effort'" in lines[0], err
    assert srv.count == 0 and not (tmp_path / "runs").exists()


def test_prices_in_the_config_are_validated_naming_the_key():
    ok = make_config(**{"llm.prices.o9-mini.input": 1.1, "llm.prices.o9-mini.output": 4.4})
    assert ok.llm.prices["o9-mini"].input == 1.1 and ok.llm.prices["o9-mini"].cached_input is None
    bad = [({"llm.prices.o9-mini.input": -1, "llm.prices.o9-mini.output": 1}, r"'llm.prices.o9-mini.input': .*>= 0|greater"),
           ({"llm.prices.o9-mini.input": float("inf"), "llm.prices.o9-mini.output": 1}, r"'llm.prices.o9-mini.input': .*finite"),
           ({"llm.prices.o9-mini.input": 1}, r"'llm.prices.o9-mini.output': Field required"),
           ({"llm.prices.o9-mini.input": 1, "llm.prices.o9-mini.output": 1, "llm.prices.o9-mini.ouput": 1},
            r"unknown key 'llm.prices.o9-mini.ouput'"),
           ({"llm.prices.o9-mini.input": 1, "llm.prices.o9-mini.output": 1, "llm.prices.o9-mini.batch_discount": 2},
            r"'llm.prices.o9-mini.batch_discount'")]
    for over, msg in bad:
        with pytest.raises(InfirError, match=msg):
            make_config(**over)


def test_quoted_keys_for_model_names_with_dots_and_the_effective_config_round_trips(tmp_path):
    cfg = make_config(**{'llm.prices."gpt-4.1-2099".input': 2.0, 'llm.prices."gpt-4.1-2099".output': 8.0,
                         "llm.prices.o9-mini.input": 1.1, "llm.prices.o9-mini.output": 4.4,
                         "llm.prices.o9-mini.reasoning_tokens": {"medium": 1500}})
    assert set(cfg.llm.prices) == {"gpt-4.1-2099", "o9-mini"}
    path = tmp_path / "eff.toml"
    path.write_text(to_toml(cfg))
    again = load_config(path)
    assert again.llm.prices == cfg.llm.prices
    with pytest.raises(InfirError, match=r"not a dotted key"):
        make_config(**{'llm.prices."gpt-4.1.input': 1})
