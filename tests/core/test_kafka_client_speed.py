"""kafka-python checks every record's CRC32C; without the C implementation it does so
in pure Python, which took half of the delivery sink's CPU in its queue scans."""

from kafka.record import util


def test_kafka_python_uses_the_c_crc32c():
    assert util._crc32c is not util.crc32c_py
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
