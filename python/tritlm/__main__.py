"""Command line: python -m tritlm {generate,chat,info,bench,convert}.

Exit status: 0 on success; 2 for a bad command line (argparse's status, also given for option
values the engine rejects: a zero thread count, a prompt longer than the context); 1 when the
work itself fails (an unreadable or corrupt model, a write error, stdout's reader gone); 130 after
Ctrl-C. Generated text goes to stdout, everything else (speeds, warnings, errors) to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ContextOverflowError, InvalidArgumentError, TritlmError

if TYPE_CHECKING:
    from .llm import LLM
    from .scheduler import Stream

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a program that Ctrl-C ended


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, refused before any work starts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def existing_path(text: str) -> str:
    """An argparse type: a path that exists, so a mistyped one is a usage error found at once."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return text


def _describe(e: BaseException) -> str:
    """One line for an error: an OSError as 'file: reason' rather than '[Errno 2] ...'."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # A command line user gets the warning, not the source line of the library that issued it.
    print(f"warning: {message}", file=sys.stderr)


def run_command(fn: Callable[[], int]) -> int:
    """Run one command so that its expected failures end as one line on stderr and an exit
    status (see the module docstring), never a traceback. ``python -m tritlm.bench`` shares it."""
    if hasattr(sys.stdout, "reconfigure"):
        # Model text may hold characters the console's encoding lacks (a cp1252 console): print
        # them as '?' rather than stop the generation with a UnicodeEncodeError.
        sys.stdout.reconfigure(errors="replace")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return fn()
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line the interrupted output left open
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout's reader went away (`... | head`): stop quietly. stdout now points at /dev/null,
        # so the interpreter's final flush does not report the same broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except ValueError as e:  # a value the engine refused: InvalidArgumentError, ContextOverflowError, ...
        print(f"error: {_describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (TritlmError, OSError, MemoryError) as e:
        print(f"error: {_describe(e)}", file=sys.stderr)
        return EXIT_FAILURE


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", type=existing_path, default=None,
                   help="GGUF file or Hugging Face folder (default: the model bundled with tritlm)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-c", "--ctx", type=int, default=None,
                   help="context size in tokens (default: the model's own, at most 4096)")
    p.add_argument("--head", choices=["f16", "q8"], default="f16", help="output head precision")


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-tokens", type=int, default=256, help="tokens to generate at most (default 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=0.95, help="default 0.95")
    p.add_argument("--top-k", type=int, default=40, help="0 keeps every token (default 40)")
    p.add_argument("--min-p", type=float, default=0.05, help="default 0.05")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="1 is none (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-text token")


def _sampling_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_tokens=a.max_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        min_p=a.min_p,
        repetition_penalty=a.repeat_penalty,
        seed=a.seed,
        ignore_eos=a.ignore_eos,
    )


def _load(a: argparse.Namespace, n_ctx: int | None = None) -> LLM:
    from .llm import LLM

    # One sequence at a time here, so the KV cache is reserved for one, not the server's eight.
    return LLM(a.model, n_threads=a.threads, n_ctx=n_ctx or a.ctx, head=a.head, max_seqs=1)


def cmd_generate(a: argparse.Namespace) -> int:
    llm = _load(a)
    completion = None
    for delta in llm.stream(a.prompt, **_sampling_kwargs(a)):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        completion = delta.completion or completion
    sys.stdout.write("\n")
    if completion is not None:
        t, n = completion.timings, completion.usage.completion_tokens
        # The generation rate is over the steps after the first token (which the prompt pass
        # yields), so one token has no rate to show.
        rate = f" at {t.generation_tokens_per_s:.1f} tok/s" if n > 1 else ""
        print(
            f"[{completion.usage.prompt_tokens} prompt tokens at {t.prompt_tokens_per_s:.1f} tok/s, "
            f"{n} generated{rate}, finish: {completion.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _read_turn(interactive: bool) -> str | None:
    """The user's next line, or None at end of input. The prompt goes to stderr and only to a
    terminal, so stdout holds the replies alone when it is piped or redirected."""
    if interactive:
        sys.stderr.write("> ")
        sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        if interactive:
            print(file=sys.stderr)  # Ctrl-D leaves the cursor after the prompt
        return None
    return line.rstrip("\n")


def _open_reply(llm: LLM, messages: list[dict[str, object]], kwargs: dict[str, Any]) -> Stream:
    """The reply's stream. A conversation that outgrows the context forgets its oldest exchanges
    (the system prompt stays), much as llama.cpp's chat shifts its context, rather than end."""
    first = 1 if messages[0]["role"] == "system" else 0
    while True:
        try:
            return llm.chat_stream(messages, **kwargs)
        except ContextOverflowError:
            if len(messages) - first <= 1:  # the new message alone does not fit
                raise
            del messages[first:first + 2]
            print("[the conversation outgrew the context: its oldest exchange is forgotten]", file=sys.stderr)


def cmd_chat(a: argparse.Namespace) -> int:
    llm = _load(a)
    interactive = sys.stdin.isatty()
    messages: list[dict[str, object]] = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    if interactive:
        print("tritlm chat: an empty line or Ctrl-D ends the conversation, Ctrl-C a reply.", file=sys.stderr)
    kwargs = _sampling_kwargs(a)
    while (line := _read_turn(interactive)) is not None and line.strip():
        messages.append({"role": "user", "content": line})
        stream = _open_reply(llm, messages, kwargs)
        reply = []
        try:
            for delta in stream:
                sys.stdout.write(delta.text)
                sys.stdout.flush()
                reply.append(delta.text)
        except KeyboardInterrupt:
            if not interactive:
                raise
            # At a terminal Ctrl-C stops the reply, as in llama.cpp's chat; the conversation goes on.
        finally:
            stream.close()
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .bundled import default_model_path
    from .loaders import load_model

    spec = load_model(default_model_path() if a.path is None else a.path)
    c = spec.config
    print(f"path          : {spec.path}")
    print(f"architecture  : {c['arch']} (activation {c['activation']}, sub-norms {c['sub_norms']})")
    print(
        f"shape         : {c['n_layers']} layers, dim {c['dim']}, heads {c['n_heads']} (kv {c['n_kv_heads']}), "
        f"head_dim {c['head_dim']}, ffn {c['ffn_dim']}, vocab {c['vocab_size']}"
    )
    print(f"rope theta    : {c['rope_theta']:.7g}, rms eps {c['norm_eps']:.7g}")
    trained = c.get("max_position")
    print(f"context       : {f'{trained} tokens (trained)' if trained else 'not stated'}")
    types: dict[str, int] = {}
    for t in spec.tensor_types.values():
        types[t] = types.get(t, 0) + 1
    print("tensor types  : " + ", ".join(f"{t} x{n}" for t, n in sorted(types.items())))
    kinds: dict[str, int] = {}
    for name, w in spec.weights.items():
        kind = getattr(w, "format", None) or ("float" if ".attn_" in name or ".ffn_" in name else None)
        if kind and not name.endswith("norm"):
            kinds[kind] = kinds.get(kind, 0) + 1
    print("linears run as: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    print(f"chat template : {'(built-in 2B4T fallback)' if not spec.chat_template else spec.chat_template[:200]!r}")
    return 0


def _bytes(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e9 else f"{n / 1e6:.3f} MB"


def cmd_bench(a: argparse.Namespace) -> int:
    """pp / tg tokens/s beside the roofline (python/tritlm/bench.py measures; this checks the
    options that argparse cannot: the CPUs there are, the context the runs need)."""
    from . import _core
    from .bench import check_threads, context_needed, dump_json, run_model_bench

    threads = _core.get_num_threads() if a.threads is None else a.threads
    try:
        check_threads(threads)
    except argparse.ArgumentTypeError as e:
        raise InvalidArgumentError(f"argument -t/--threads: {e}", param="threads") from None
    need = context_needed(a.prompt, a.gen)
    if a.ctx is not None and a.ctx < need:
        # A smaller context would cut tg short (or refuse pp) under a label that says otherwise.
        raise InvalidArgumentError(f"argument -c/--ctx: {a.ctx} cannot hold -p {a.prompt} -n {a.gen} "
                                   f"(needs at least {need})", param="ctx")
    llm = _load(a, a.ctx or need)
    text = a.output == "text"
    # In text each line is printed as soon as it is measured, as llama-bench prints its rows.
    res = run_model_bench(llm, threads=threads, prompt=a.prompt, gen=a.gen, repeats=a.repeats,
                          show=(lambda line: print(line, flush=True)) if text else None)
    if not text:
        dump_json(res.to_json(), sys.stdout)
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from .loaders.convert import convert

    if os.path.isfile(a.dst) and not a.force:
        raise InvalidArgumentError(f"{a.dst} exists; pass --force to overwrite it", param="dst")
    start = time.perf_counter()
    convert(a.src, a.dst, a.type)
    print(f"wrote {a.dst} ({_bytes(os.path.getsize(a.dst))}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m tritlm", description="Ternary and 1-bit LLMs on the CPU.")
    parser.add_argument("--version", action="version", version=f"tritlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion of a prompt to stdout")
    _add_model(g)
    _sampling(g)
    g.add_argument("prompt")
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("chat", help="a chat: one line a turn from stdin, replies on stdout")
    _add_model(c)
    _sampling(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.set_defaults(fn=cmd_chat)
    i = sub.add_parser("info", help="architecture, sizes, tensor types and template of a model")
    i.add_argument("path", nargs="?", type=existing_path, default=None,
                   help="GGUF file or Hugging Face folder (default: the bundled model)")
    i.set_defaults(fn=cmd_info)
    b = sub.add_parser("bench", help="prompt and generation speed, as llama-bench measures them")
    _add_model(b)
    b.add_argument("-p", "--prompt", type=count(1), default=128, help="prompt tokens (default 128)")
    b.add_argument("-n", "--gen", type=count(0), default=64, help="generated tokens, 0 for none (default 64)")
    b.add_argument("-r", "--repeats", type=count(1), default=3, help="runs of each (default 3)")
    b.add_argument("-o", "--output", choices=["text", "json"], default="text",
                   help="what stdout gets: a line per figure (text, default) or one JSON document (json)")
    b.set_defaults(fn=cmd_bench)
    v = sub.add_parser("convert", help="Hugging Face BitNet folder -> GGUF")
    v.add_argument("src", type=existing_path, help="Hugging Face BitNet folder")
    v.add_argument("dst", help="GGUF file to write")
    v.add_argument("--type", choices=["tq2_0", "tq1_0", "i2_s"], default="i2_s",
                   help="linear weight type (default i2_s)")
    v.add_argument("-f", "--force", action="store_true", help="overwrite dst if it exists")
    v.set_defaults(fn=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: int(args.fn(args)))


if __name__ == "__main__":
    sys.exit(main())
