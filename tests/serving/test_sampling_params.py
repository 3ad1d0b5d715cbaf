import pytest

from model.serve import SamplingParams


def test_defaults_and_normalisation():
    p = SamplingParams(stop="###", stop_token_ids=(5, 6))
    assert p.stop == ["###"] and p.stop_token_ids == [5, 6]
    assert not p.greedy and not p.uses_top_k
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(top_k=3).uses_top_k and not SamplingParams(top_k=-1).uses_top_k


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "1"),
    ("temperature", True), ("top_k", -2), ("top_k", 1.5), ("top_p", 0.0), ("top_p", 1.01), ("top_p", None),
    ("seed", -1), ("seed", 2 ** 63), ("seed", 1.0), ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 2.0),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["a"]), ("stop", [""]), ("stop", [3]), ("ignore_eos", 1),
    ("n", 0), ("n", 1.0),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})


def test_check_vocab():
    SamplingParams(stop_token_ids=[511]).check_vocab(512)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SamplingParams(stop_token_ids=[512]).check_vocab(512)


def test_completions_get_their_own_seeds():
    p = SamplingParams(seed=10, n=3, temperature=0.5)
    assert [q.seed for q in (p.for_completion(i) for i in range(3))] == [10, 11, 12]
    assert p.for_completion(2).n == 1 and p.for_completion(2).temperature == 0.5
    assert SamplingParams(n=2).for_completion(1).seed is None
    with pytest.raises(ValueError, match="SamplingParams.seed"):
        SamplingParams(seed=2 ** 63 - 1, n=2)
