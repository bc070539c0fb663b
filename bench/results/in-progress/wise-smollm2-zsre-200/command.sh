#!/bin/sh
# WISE's single-edit zsRE row on SmolLM2 (issue 37); resumes runs/wise-smollm2-zsre-200.
exec ./target/release/ftedit eval --model smollm2 --n 200 --protocol single --no-generation --chat --threads 2 --quiet \
  --data ../shared/data/zsre/zsre_eval_dev.json --method wise --out runs/wise-smollm2-zsre-200
