"""The fault matrix (/work/shared/fault-matrix.md), one file per row: `test_row_NN_<what>.py`,
each test named `test_row_NN_...`. Real processes and sockets on loopback only: the fake
upstream, real redis-server processes, and the project's fault proxy between them and the
gateway; no mocks."""
