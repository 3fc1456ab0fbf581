"""cifar-serve: classify images dropped into a web page, or sent to its API; no camera needed.

\b
cifar-serve                          http://127.0.0.1:8000/ on this machine only
cifar-serve --host 0.0.0.0           any machine that can reach this one, with a token
curl --data-binary @cat.jpg http://127.0.0.1:8000/api/classify
cifar-serve --collect DIR            also label what cifar-run --collect DIR kept, on /label

The page takes several images at once (a form, or drag and drop); POST /api/classify takes an
image as the multipart field 'image' or as the raw body and answers with JSON. For a live
camera in the browser, see cifar-run --camera SRC --serve PORT. The server is the serve
extra: pip install 'cifar-edge[serve]'.
"""

from __future__ import annotations

import click

from runtime.cli.common import auth_options, load_classifier, run_cli, traceback_option, trust_options
from runtime.errors import ExitCode
from runtime.model.providers import PROVIDER_HELP
from runtime.signals import SignalStop

PROG = "cifar-serve"


def serve_until_signalled(server, note) -> int:
    """Serve until SIGINT or SIGTERM, then close the server; returns the exit code."""
    signals = SignalStop().install()
    try:
        server.start()
        while not signals.event.wait(0.5):
            pass
    finally:
        signals.restore()
        server.close()
    note(f"stopped by {signals.name}")
    return ExitCode.INTERRUPTED


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="ONNX model exported by cifar-export [default: the bundled model].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 every "
                   "network (a token is then required).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
@auth_options
@click.option("--collect", metavar="DIR", type=click.Path(file_okay=False, exists=True),
              help="Label the frames cifar-run --collect DIR kept, on the page /label: each is "
                   "filed under DIR/labelled/<class>/.")
@click.option("--provider", default="auto", show_default=True, help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime intra-op threads (0 = onnxruntime's default).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many labels to report per image.")
@trust_options
@traceback_option
def main(model, host, port, token, no_auth, collect, provider, threads, top_k, no_verify, allow_failed, show_traceback):
    def note(message: str) -> None:
        click.echo(f"{PROG}: {message}", err=True)

    def body() -> int:
        from runtime.web import ServeConfig, WebServer

        config = ServeConfig(host=host, port=port, token=token, auth=not no_auth)
        clf = load_classifier(model, provider, threads, top_k, no_verify, allow_failed, note)
        note(clf.describe())
        collector = None
        if collect is not None:
            from pathlib import Path

            from runtime.image.collect import CollectOptions, Collector

            collector = Collector(CollectOptions(Path(collect)), model=clf.model_path.name, exclusive=True)
            note(f"labelling {len(collector.pending())} collected frame(s) of {collect} on /label")
        return serve_until_signalled(WebServer(clf, config, log=note, collector=collector), note)

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
