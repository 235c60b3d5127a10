"""Weight files are told apart by their first bytes, whatever torch.load itself can read."""
import torch
from safetensors.torch import save_file

from rcdm.encoders import weights


def test_safetensors_whose_header_length_starts_with_0x80_is_read_as_safetensors(tmp_path, monkeypatch):
    """A safetensors file starts with its 8-byte little-endian header length; 0x..80 makes its first byte 0x80, a
    pickle's protocol marker (the shipped encoder's header is 0x2f80 bytes long). torch >= 2.14's torch.load happens
    to read such a file, older releases do not, so torch.load is made to fail here."""
    for n in range(1, 400):  # grow one tensor name until the header length's low byte is 0x80
        state = {"w" * n: torch.arange(6.0).view(2, 3)}
        path = tmp_path / f"m{n}.safetensors"
        save_file(state, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        raise AssertionError("no header length ending in 0x80 found")

    def no_pickles(*args, **kwargs):
        raise RuntimeError("torch.load must not be used for a safetensors file")

    monkeypatch.setattr(weights.torch, "load", no_pickles)
    got = weights.read_weights(path)
    assert torch.equal(got["w" * n], state["w" * n])
