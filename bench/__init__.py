"""The benchmark of issue 4: edge-worker against the real broker and the edge emulator. Run `python -m bench.run`."""
