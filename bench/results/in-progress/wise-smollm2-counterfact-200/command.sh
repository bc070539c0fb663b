#!/bin/sh
# WISE's single-edit CounterFact row on SmolLM2 (issue 37); resumes runs/wise-smollm2-counterfact-200.
exec ./target/release/ftedit eval --model smollm2 --n 200 --protocol single --no-generation --chat --threads 2 --quiet \
  --data ../shared/data/counterfact/counterfact_rome_dev.json --method wise --out runs/wise-smollm2-counterfact-200
