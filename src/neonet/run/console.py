"""What a neonet process prints: one logging format, no third-party adverts, "did you mean" for typos.

- :func:`setup_logging`: the root logger's format and level (``NEONET_LOG_LEVEL``, default INFO);
  :func:`route_lightning_logging` then takes away Lightning's own console handlers, so that each
  Lightning message is printed once, in that format, at that level.
- :func:`silence_known_noise`: Lightning's "💡 Tip" adverts (litlogger, litmodels) and the
  deprecation warning that Lightning's own code triggers in torch (``LeafSpec``), each filtered by
  its logger or module and its message; every other warning is shown as usual.
- :func:`did_you_mean` and :class:`SuggestingParser`: an unknown verb or option is answered with the
  closest known one (:mod:`difflib`), not with the whole usage.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any, NoReturn

#: Loggers to which Lightning attaches a console handler of its own when it is imported.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
#: Loggers through which Lightning's ``rank_zero_info`` prints its adverts.
LIGHTNING_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
)


def setup_logging() -> None:
    """Log to stderr as ``HH:MM:SS LEVEL logger: message`` at ``NEONET_LOG_LEVEL`` (default INFO).

    Leaves an existing configuration alone (e.g. a test runner's, or an application's that imports neonet).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("NEONET_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    silence_known_noise()
    route_lightning_logging()


def route_lightning_logging() -> None:
    """Print Lightning's messages once, through the root logger's handlers (after Lightning is imported).

    ``import lightning`` gives the ``lightning`` logger a console handler of its own (``INFO: ...``)
    that also propagates to the root logger, so each message appeared twice. Here Lightning's console
    handlers are removed and its loggers take the root logger's level. Does nothing before Lightning is
    imported or while the root logger has no handler; calling it again is harmless.
    """
    if not logging.getLogger().handlers or not any(name in sys.modules for name in LIGHTNING_LOGGERS):
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


class _DropAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_ADVERTS = _DropAdverts()


def silence_known_noise() -> None:
    """Filter the third-party messages that say nothing about this run (idempotent).

    - Lightning's "💡 Tip" adverts, on its ``rank_zero`` loggers only;
    - torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated", only where Lightning's
      ``lightning.pytorch.utilities._pytree`` triggers it (Lightning's code, not neonet's or the user's);
    - scikit-image's ``FutureWarning`` on ``remove_small_objects(min_size=...)``, raised inside MONAI's
      ``RemoveSmallObjects`` (``monai.transforms.utils``), whose argument MONAI passes on;
    - MONAI's "Setting affine, but the applied meta contains an affine" from ``monai.data.meta_tensor``
      when an inverted transform restores the scan's own affine (NeoSeg's masks are written in the scan's space).
    """
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _ADVERTS not in logger.filters:
            logger.addFilter(_ADVERTS)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore", message=r"Parameter `min_size` is deprecated", category=FutureWarning, module=r"monai\.transforms\.utils"
    )
    warnings.filterwarnings(
        "ignore",
        message=r"Setting affine, but the applied meta contains an affine",
        category=UserWarning,
        module=r"monai\.data\.meta_tensor",
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word`` (:func:`difflib.get_close_matches`), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_options_message(message: str, options: Iterable[str]) -> str | None:
    """For a jsonargparse "unrecognized arguments: ..." message: one line per unknown option with the closest known one.

    Returns None for any other message (it is shown as jsonargparse wrote it).
    """
    prefix = "unrecognized arguments:"
    if not message.lower().startswith(prefix):
        return None
    known = [o for o in options if o.startswith("--")]
    unknown = [a.split("=", 1)[0] for a in message[len(prefix) :].split() if a.startswith("-")]
    if not unknown:
        return None
    return "\n".join(f"unknown option '{name}'{did_you_mean(name, known)}" for name in unknown)


class SuggestingParser:
    """Mixin for a jsonargparse ``ArgumentParser``: an unknown option is one line with the closest known option.

    ``neonet fit --trainer.max_epohcs 3`` prints ``neonet fit: error: unknown option '--trainer.max_epohcs';
    did you mean '--trainer.max_epochs'?`` and where the options are listed, instead of the whole usage.
    Every other parse error is reported as jsonargparse reports it. A parser built from this class
    without a ``prog`` (jsonargparse's ``--model.help CLASS`` parser) is named ``default_prog``.
    """

    #: ``prog`` of a parser built without one (instead of the script's file name, ``__main__.py``).
    default_prog = "neonet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", self.default_prog)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Report a parse error; an unknown option with the closest known one."""
        parser: Any = getattr(ex, "subcommand_parser", None) or self
        text = unknown_options_message(message, getattr(parser, "_option_string_actions", {}))
        if text is None or not getattr(self, "exit_on_error", True):
            super().error(message, ex)  # type: ignore[misc]
        prog = str(parser.prog).replace(" [options]", "")
        sys.stderr.write("".join(f"{prog}: error: {line}\n" for line in str(text).splitlines()))
        sys.stderr.write(f"(`{prog} --help` lists the options)\n")
        sys.exit(2)
