"""Stage normalize: manifest + split -> per split the list of its image files and its encoded targets, and how a file
becomes the model's input.

No pixels are stored (a decoded copy of the dataset is 5-50x its files): images.json says where the files are and how
each is decoded (ingest.*) and resized to normalize.image_size (aspect kept: crop or pad); the readers decode them
(transfer_learning/image_sets.py). Pixel scaling happens inside the model. Class order (or the target's training
mean/std) is saved to encoding.json.
"""

from transfer_learning import files, image_sets, params, paths, records, targets
from transfer_learning.errors import PipelineError, run


def main():
    p = params.load()
    size = p.normalize.image_size
    # the decoded image is smaller than the model input: every photo would be upscaled
    if p.ingest.max_short_side < size:
        raise PipelineError(
            f"normalize.image_size={size} is above ingest.max_short_side={p.ingest.max_short_side}, so images would be "
            f"upscaled from a shrunk decode: raise ingest.max_short_side to at least {size} (it reruns ingest)"
        )
    manifest = files.read_manifest(paths.MANIFEST, p.data.task)
    split = files.read_split(paths.SPLIT, manifest)  # joined on the path
    enc = targets.encoding_of(manifest.loc[split == "train", "label"], p.data.task)
    targets.check_classes(manifest["label"], split, enc)
    for name in paths.SPLITS:
        rows = manifest[split == name]
        files.write_csv(paths.split_list(name), rows[image_sets.LIST_COLUMNS])
        files.save_npy(paths.split_array(paths.NORMALIZED, name, "targets"), targets.encode(rows["label"], enc))
    preparation = records.Preparation(
        max_short_side=p.ingest.max_short_side,
        max_megapixels=p.ingest.max_megapixels,
        image_size=size,
        resize=p.normalize.resize,
    )
    records.ImageFiles(source=p.data.source, csv=p.data.csv, preparation=preparation).write(paths.IMAGE_FILES)
    enc.write(paths.ENCODING)
    print(f"normalize: {size}x{size} ({p.normalize.resize}), {len(manifest)} images listed -> {paths.NORMALIZED}")


if __name__ == "__main__":
    run(main)
