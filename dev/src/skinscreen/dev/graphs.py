"""Two ONNX graphs of one model side by side, in one process: same outputs, which is faster.

    python -m skinscreen.dev.graphs OLD.onnx NEW.onnx --photos ../shared/data/pad-ufes-20

Scores real PAD-UFES-20 photos, preprocessed as the worker does, with both graphs and
prints the largest difference of each output, then each graph's nodes by type and its
photos/s at each batch size. The two graphs are timed in alternating rounds, so a shared
machine's drift falls on both alike. Sessions are configured as the worker's are.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from skinscreen.core.clinical import encode_many
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.core.pad_ufes import load_pad_ufes


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(
    graph: ort.InferenceSession, images: np.ndarray, clinical: np.ndarray
) -> dict[str, np.ndarray]:
    available = {"image": images, "clinical": clinical}
    return {node.name: available[node.name] for node in graph.get_inputs()}


def photos_per_second(
    graph: ort.InferenceSession, images: np.ndarray, clinical: np.ndarray, seconds: float
) -> float:
    inputs = feeds(graph, images, clinical)
    graph.run(None, inputs)  # warm-up: the first call of a shape allocates
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        graph.run(None, inputs)
        done += len(images)
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/pad-ufes-20"))
    parser.add_argument("--size", type=int, default=224, help="the card's input_size")
    parser.add_argument("--limit", type=int, default=64, help="photos for the parity check")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="per graph, batch, round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all)")
    args = parser.parse_args(argv)

    samples = load_pad_ufes(args.photos).samples
    chosen = [samples[i] for i in np.linspace(0, len(samples) - 1, args.limit).astype(int)]
    images = np.stack([load_and_preprocess(s.image_path, args.size) for s in chosen])
    clinical = encode_many([s.clinical for s in chosen])
    graphs = {"old": session(args.old, args.threads), "new": session(args.new, args.threads)}

    outputs = {
        name: graph.run(None, feeds(graph, images, clinical)) for name, graph in graphs.items()
    }
    names = [node.name for node in graphs["old"].get_outputs()]
    for index, name in enumerate(names):
        difference = np.abs(outputs["old"][index] - outputs["new"][index]).max()
        print(f"{name}: max |old - new| over {len(images)} photos = {difference:.1e}")
    for label, path in (("old", args.old), ("new", args.new)):
        counts = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
        top = ", ".join(f"{op} {n}" for op, n in counts.most_common(8))
        print(f"{label} {path}: {sum(counts.values())} nodes (Pad {counts['Pad']}); {top}")

    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for batch in (int(value) for value in args.batches.split(",")):
            picked = np.arange(batch) % len(images)
            for name, graph in graphs.items():
                rate = photos_per_second(graph, images[picked], clinical[picked], args.seconds)
                rates.setdefault((name, batch), []).append(rate)
    print("batch | old photos/s | new photos/s | new / old")
    for batch in (int(value) for value in args.batches.split(",")):
        old = float(np.median(rates[("old", batch)]))
        new = float(np.median(rates[("new", batch)]))
        print(f"{batch} | {old:.1f} | {new:.1f} | {new / old:.2f}")


if __name__ == "__main__":
    main()
