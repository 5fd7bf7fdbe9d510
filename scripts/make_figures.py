"""Draw the documentation's figures from real runs on the tiny models (nothing is drawn by hand).

    python scripts/make_figures.py        # writes docs/figures/*.png (about a minute on 2 CPU cores)

- training-curve.png: loss and accuracy of the tiny text classifier fine-tuned on toy data;
- text-to-image-grid.png: the tiny Stable Diffusion pipeline's validation grid after a short fine-tune;
- detection.png and segmentation.png: taskzoo.visualize on the tiny detector's and segmenter's predictions.
"""

import shutil
import tempfile
from pathlib import Path

import taskzoo
from taskzoo.demo import quiet_libraries
from taskzoo.testing import tiny_model, toy_dataset

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def finetuned(task: str, folder: Path, **options):
    zoo = taskzoo.load(task, model=tiny_model(task, folder / "model"), device="cpu")
    settings = {**type(zoo).demo_config, **options}
    train_size, eval_size = settings.pop("train_size"), settings.pop("eval_size")
    result = zoo.finetune(toy_dataset(task, train_size), eval=toy_dataset(task, eval_size, seed=1),
                          output_dir=str(folder / "run"), progress=False, **settings)
    return zoo, result


def main() -> None:
    quiet_libraries()
    FIGURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _, result = finetuned("text-classification", scratch / "tc", eval_every=4, log_every=2)
        shutil.copy(result.output_dir / "training_curves.png", FIGURES / "training-curve.png")

        _, result = finetuned("text-to-image", scratch / "t2i", epochs=6)
        grids = sorted(result.output_dir.glob("validation-step-*.png"))
        shutil.copy(grids[-1], FIGURES / "text-to-image-grid.png")

        for task, name in (("object-detection", "detection"), ("image-segmentation", "segmentation")):
            if task not in taskzoo.task_names():
                continue
            zoo, _ = finetuned(task, scratch / name)
            image = toy_dataset(task, 1, seed=7)[0]["image"]
            taskzoo.visualize(image, zoo.predict(image), path=FIGURES / f"{name}.png")
    print(f"figures written to {FIGURES}")


if __name__ == "__main__":
    main()
