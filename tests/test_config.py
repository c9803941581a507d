import pytest

from omp_init import ConfigError, TransplantConfig


def _cfg(**overrides):
    return TransplantConfig(**{"base": "b", "donor": "d", "output": "o", **overrides})


def test_defaults_are_the_documented_ones():
    cfg = _cfg()
    assert (cfg.k, cfg.method, cfg.device, cfg.document_start) == (64, "omp+fvt", "auto", "auto")


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"k": 0}, "--k"),
        ({"k": -3}, "--k"),
        ({"method": "magic"}, "--method"),
        ({"pad_to_multiple_of": 0}, "--pad-to-multiple-of"),
        ({"vocab_size": -1}, "--vocab-size"),
        ({"device": "tpu"}, "--device"),
        ({"score_dtype": "int4"}, "--score-dtype"),
    ],
)
def test_bad_values_name_the_flag(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        _cfg(**overrides)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        _cfg(k=0, method="magic")
    assert "--k" in str(info.value) and "--method" in str(info.value)


def test_from_kwargs_rejects_unknown_and_missing():
    with pytest.raises(ConfigError, match="unknown option"):
        TransplantConfig.from_kwargs(base="b", donor="d", output="o", kk=3)
    with pytest.raises(ConfigError, match="output"):
        TransplantConfig.from_kwargs(base="b", donor="d")


def test_fingerprint_tracks_results_not_execution():
    assert (
        _cfg().fingerprint() == _cfg(device="cpu", max_batch_tokens=7, overwrite=True).fingerprint()
    )
    assert _cfg().fingerprint() != _cfg(k=8).fingerprint()
    assert _cfg().fingerprint({"base": 1}) != _cfg().fingerprint({"base": 2})


def test_fill_in_no_donor():
    from omp_init.config import NO_DONOR_METHOD, fill_in_no_donor

    given = {"base": "b", "donor": "d", "output": "o"}
    assert fill_in_no_donor(given) is given  # a donor: nothing to fill in
    assert fill_in_no_donor({"base": "b", "tokenizer": "t"}) == {"base": "b", "tokenizer": "t", "donor": "b", "method": NO_DONOR_METHOD}
    assert fill_in_no_donor({"base": "b", "tokenizer": "t", "method": "mean"})["method"] == "mean"
    with pytest.raises(ConfigError, match="--donor is missing.*--tokenizer"):
        fill_in_no_donor({"base": "b", "donor": None})
