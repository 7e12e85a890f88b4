"""Run the real CLI with one fault injected: ``python tests/faults/inject.py FAULT -- CLI ARGS``.

Faults (test-only; nothing in the package reads them):

- ``nan:STAGE:EPOCH:STEP`` -- the training images of that step (1-based) of
  ``STAGE`` become NaN, as a corrupt batch or an exploding activation would.
- ``no-space-check`` -- the free-space estimate is skipped, so a small disk
  really fills up during the stage (the write guards must catch it).
- ``enospc:FILE`` -- writing a file named FILE raises ``OSError(ENOSPC)``.
- ``free-bytes:N`` -- the disk of the run dir reports N free bytes.
- ``keras-version:V`` -- ``keras.__version__`` reads V (another Keras than the multi-worker patch's).
- ``steps:SECONDS`` -- after every training step print ``step STAGE EPOCH STEP`` (1-based) and sleep
  SECONDS, so a test can send SIGTERM at a known step.
- ``sigkill-at:POINT`` -- ``index --append`` SIGKILLs itself at POINT: ``new_file_written`` (its delta or
  new base written, nothing committed), ``rows_inserted_not_committed`` (at the commit), or
  ``committed_not_cleaned_up`` (committed, the files it replaced not yet deleted).
- ``sigterm-at:EPOCH:STEP`` -- the process sends itself SIGTERM after that training step (1-based) and
  then takes 1.5 s per step: longer than TensorFlow's 1-second poll of the termination flag, so the
  save lands a step or two later whatever the machine's load (no race with a parent's signal).
"""

import errno
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)


def nan_at(stage, epoch, step):
    import tensorflow as tf

    from aaa_keras import training

    real = training.train_dataset
    state = {"stage": None}
    real_train_stage = training.train_stage

    def train_stage(name, *args, **kwargs):
        state["stage"] = name
        return real_train_stage(name, *args, **kwargs)

    def train_dataset(*args, **kwargs):
        data = real(*args, **kwargs)
        if state["stage"] != stage:
            return data
        steps_per_epoch = int(os.environ["INJECT_STEPS_PER_EPOCH"])
        target = (epoch - 1) * steps_per_epoch + (step - 1)  # batch index since the start of fit

        def poison(index, batch):
            images, labels = batch
            images = tf.cond(tf.equal(index, target), lambda: images * float("nan"), lambda: images)
            return images, labels

        return data.enumerate().map(poison)

    training.train_dataset = train_dataset
    training.train_stage = train_stage


def announce_steps(seconds, sigterm_at=None):
    import signal
    import time

    import keras

    from aaa_keras import training

    class Announce(keras.callbacks.Callback):
        def __init__(self, stage):
            super().__init__()
            self.stage, self.epoch = stage, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            nonlocal seconds
            print(f"step {self.stage} {self.epoch + 1} {batch + 1}", flush=True)
            if sigterm_at == (self.epoch + 1, batch + 1):
                os.kill(os.getpid(), signal.SIGTERM)
                seconds = 1.5
            time.sleep(seconds)

    real_train_stage = training.train_stage

    def train_stage(name, config, dataset, run_dir, log=print, callbacks=(), *args, **kwargs):
        return real_train_stage(name, config, dataset, run_dir, log, [*callbacks, Announce(name)], *args, **kwargs)

    training.train_stage = train_stage


def enospc_on(name):
    import keras

    real = keras.Model.save_weights

    def save_weights(self, filepath, *args, **kwargs):
        if os.path.basename(str(filepath)).endswith(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
        return real(self, filepath, *args, **kwargs)

    keras.Model.save_weights = save_weights


def sigkill_at(point):
    import signal

    from aaa_keras.deploy import gallery

    def die(*_args):
        os.kill(os.getpid(), signal.SIGKILL)

    write_vectors = gallery._write_vectors
    if point == "new_file_written":
        gallery._write_vectors = lambda index, path: (write_vectors(index, path), die())
    elif point == "rows_inserted_not_committed":
        gallery._commit_state = lambda connection, state: die()
    elif point == "committed_not_cleaned_up":
        gallery.GalleryIndex._cleanup = lambda self: die()
    else:
        raise SystemExit(f"unknown sigkill-at point {point!r}")


def main():
    fault, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: inject.py FAULT -- CLI ARGS"
    kind, _, spec = fault.partition(":")
    if kind == "nan":
        stage, epoch, step = spec.split(":")
        nan_at(stage, int(epoch), int(step))
    elif kind == "no-space-check":
        from aaa_keras import guard

        guard.check_free_space = lambda *a, **k: None
    elif kind == "enospc":
        enospc_on(spec)
    elif kind == "free-bytes":
        import collections
        import shutil

        usage = collections.namedtuple("usage", "total used free")
        shutil.disk_usage = lambda path: usage(10 * int(spec), 9 * int(spec), int(spec))
    elif kind == "steps":
        announce_steps(float(spec))
    elif kind == "sigterm-at":
        epoch, step = spec.split(":")
        announce_steps(0.0, sigterm_at=(int(epoch), int(step)))
    elif kind == "sigkill-at":
        sigkill_at(spec)
    elif kind == "keras-version":
        import keras

        keras.__version__ = spec
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from cli import cli

    cli(args, prog_name="cli.py")


if __name__ == "__main__":
    main()
