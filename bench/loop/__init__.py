"""The parts of `python -m bench.bench_loop`, one module per measurement: `pipeline` (the loop vs each stage alone),
`latency` (chat latency with capture on / off), `broadcast` (weight broadcast vs a raw copy), `report` (the table),
and `common` (conversations, HTTP helpers, the probe actors)."""
