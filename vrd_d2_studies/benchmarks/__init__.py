"""Speed benchmarks of the library's CP code against dense computation."""
