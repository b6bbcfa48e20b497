"""The addresses `fsanet serve` prints: the one it listens on, and the one a browser opens."""

from __future__ import annotations

import pytest

from fsanet.deploy.serve.server import page_address, url


def test_the_listening_address_brackets_ipv6():
    assert url("http", "127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert url("https", "::1", 8443) == "https://[::1]:8443"


@pytest.mark.parametrize(
    ("host", "page"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/"),  # a wildcard bind: loopback stands for it
        ("::", "http://[::1]:8000/"),
        ("127.0.0.1", "http://127.0.0.1:8000/"),
        ("192.168.1.20", "http://192.168.1.20:8000/"),
    ],
)
def test_the_page_address_is_one_a_browser_can_open(host, page):
    assert page_address("http", host, 8000) == page
