"""Markdown tables from the JSON lines of the foundation benchmark."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
fmt = lambda v, f: "—" if v is None else format(v, f)
print("\n| model | impl | device | dtype | load s | forward 16 tok ms | train step ms | first loss |")
print("|---|---|---|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['model']} | {r['impl']} | {r.get('device', 'cpu')} | {r.get('dtype', 'f32')} | {fmt(r['load_s'], '.2f')} "
          f"| {r['forward16_ms']:.1f} | {r['train_step_ms']:.0f} | {r['first_loss']:.4f} |")
by = {(r["model"], r["impl"], r.get("dtype", "f32")): r for r in rows}
print("\n| model | dtype | load speed-up | forward speed-up | train-step speed-up |")
print("|---|---|---:|---:|---:|")
for (m, impl, dt), f in by.items():
    t = by.get((m, "pytorch", dt))
    if impl != "ftedit" or t is None:
        continue
    load = f"{t['load_s'] / f['load_s']:.1f}x" if f["load_s"] and t["load_s"] else "—"
    print(f"| {m} | {dt} | {load} | {t['forward16_ms'] / f['forward16_ms']:.2f}x | {t['train_step_ms'] / f['train_step_ms']:.2f}x |")
