"""python -m bmjax.data prepare NAME --manual_dir=DIR [--data_dir=DIR]: prepare a TFDS dataset offline."""

from absl import app, flags, logging

from bmjax.data.datasets import prepare
from bmjax.errors import UsageError, exit_on_usage_error

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder of the raw files, named as TFDS expects them.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own).")


@exit_on_usage_error
def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # TFDS warns about folders it merely looks into
    if len(argv) != 3 or argv[1] != "prepare":
        raise UsageError("usage: python -m bmjax.data prepare NAME [--manual_dir=DIR] [--data_dir=DIR]")
    where = prepare(argv[2], data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
    print(f"{argv[2]} is prepared in {where}")


if __name__ == "__main__":
    app.run(main)
