"""The vectorised murmur2 partitioner against aiokafka's own (Kafka's default for keyed records)."""

from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from driftloop.partitioning import positive_murmur2


@given(st.lists(st.binary(max_size=70), max_size=60))
def test_equal_to_aiokafka_for_any_keys(keys: list[bytes]) -> None:
    assert positive_murmur2(keys).tolist() == [murmur2(k) & 0x7FFFFFFF for k in keys]


def test_many_keys_of_one_length_and_known_values() -> None:
    keys = [f"request-{i:08d}".encode() for i in range(5_000)]
    assert positive_murmur2(keys).tolist() == [murmur2(k) & 0x7FFFFFFF for k in keys]
    # values the Java client gives (its Utils.murmur2 test vectors, made positive)
    assert positive_murmur2([b"21", b"foobar"]).tolist() == [
        -973932308 & 0x7FFFFFFF,
        -790332482 & 0x7FFFFFFF,
    ]
