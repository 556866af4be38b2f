import pytest

from iapc.errors import UserError
from iapc.options import parse_size


def test_parse_size_reads_width_by_height():
    assert parse_size("1024x512") == (1024, 512)
    assert parse_size(" 256 X 128 ") == (256, 128)


@pytest.mark.parametrize("bad, message", [("1024", "not WIDTHxHEIGHT"), ("ax512", "not WIDTHxHEIGHT"),
                                          ("0x5", "too small"), ("16x8", "at least 16x16")])
def test_parse_size_rejects_bad_sizes_with_a_hint(bad, message):
    with pytest.raises(UserError, match=message):
        parse_size(bad, minimum=16 if bad == "16x8" else 1)


def test_a_partial_method_section_keeps_the_runtime_method(tmp_path):
    """A config file that sets one method key changes that key only: the runtime stays on
    streaming IAPC instead of falling back to AdaptConfig's offline (paper) defaults."""
    from iapc.runtime.config import load_yaml_config

    path = tmp_path / "runtime.yaml"
    path.write_text("method:\n  restore_probability: 0.01\n")
    method = load_yaml_config(path).method
    assert (method.method, method.preset, method.restore_probability) == ("iapc", "stream", 0.01)
    path.write_text("method:\n  preset: paper\n")
    assert load_yaml_config(path).method.preset == "paper"
