"""The golden vectors (firmware/protocol_vectors.json), byte for byte, under both runtimes."""

import json

import pytest

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.paths import PROTOCOL_VECTORS


def ids(group):
    return [v["name"] for v in json.loads(PROTOCOL_VECTORS.read_text())[group]]


def test_every_known_message_type_has_a_vector(vectors):
    covered = {v["message"]["type"] for v in vectors["valid"]}
    assert covered == {p.type_name(code) for code in pj.known_types()}


@pytest.mark.parametrize("index", range(len(ids("valid"))), ids=ids("valid"))
def test_cpython_encodes_and_decodes_valid_vector(vectors, index):
    vector = vectors["valid"][index]
    message = pj.from_dict(vector["message"])
    assert p.encode(message).hex() == vector["hex"]
    assert p.decode(bytes.fromhex(vector["hex"])) == message


@pytest.mark.parametrize("index", range(len(ids("decode_only"))), ids=ids("decode_only"))
def test_cpython_decodes_decode_only_vector(vectors, index):
    vector = vectors["decode_only"][index]
    assert pj.to_dict(p.decode(bytes.fromhex(vector["hex"]))) == vector["message"]


@pytest.mark.parametrize("index", range(len(ids("invalid"))), ids=ids("invalid"))
def test_cpython_rejects_invalid_vector(vectors, index):
    vector = vectors["invalid"][index]
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(bytes.fromhex(vector["hex"]))
    assert p.error_name(caught.value.code) == vector["error"]


@pytest.mark.micropython
def test_micropython_reproduces_every_vector(micropython, vectors):
    result = micropython.script("protocol_vectors.py", str(PROTOCOL_VECTORS)).check()
    produced = json.loads(result.stdout)
    for vector, got in zip(vectors["valid"], produced["valid"], strict=True):
        assert got["hex"] == vector["hex"], vector["name"]
        assert got["decoded"] == vector["message"], vector["name"]
    for vector, got in zip(vectors["decode_only"], produced["decode_only"], strict=True):
        assert got == vector["message"], vector["name"]
    for vector, got in zip(vectors["invalid"], produced["invalid"], strict=True):
        assert got == {"error": vector["error"]}, vector["name"]
