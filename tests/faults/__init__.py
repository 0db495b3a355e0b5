"""Process-level fault tests: a TCP proxy (proxy.py), a 3-broker cluster behind it with a
producer workload and a checker (harness.py), and the tests that use them."""
