"""A smoke test with the official `openai` npm package under Node: a chat completion and a
stream, against the real server. The package is installed with npm into the pytest cache once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_harness import MODEL_ID, Running, config_for, running, tiny_model

SCRIPT = r"""
import OpenAI from 'openai';
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: 'sk-node', maxRetries: 0 });
const messages = [{ role: 'user', content: 'The cat sat on the mat' }];
const plain = await client.chat.completions.create({ model: process.env.MODEL, messages, max_tokens: 6, seed: 3,
                                                      ignore_eos: true });
let streamed = '';
let usage = null;
const stream = await client.chat.completions.create({ model: process.env.MODEL, messages, max_tokens: 6, seed: 3,
                                                       ignore_eos: true, stream: true,
                                                       stream_options: { include_usage: true } });
for await (const chunk of stream) {
  for (const choice of chunk.choices) streamed += choice.delta.content ?? '';
  if (chunk.usage) usage = chunk.usage;
}
let notFound = null;
try { await client.models.retrieve('missing'); } catch (e) { notFound = [e.status, e.constructor.name]; }
console.log(JSON.stringify({ plain: plain.choices[0].message.content, finish: plain.choices[0].finish_reason,
                             streamed, usage, notFound }));
"""


@pytest.fixture(scope="module")
def node_openai(request: pytest.FixtureRequest) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    folder = Path(request.config.cache.mkdir("npm-openai"))
    if not (folder / "node_modules" / "openai" / "package.json").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(folder), "openai"],
                       check=True, capture_output=True, timeout=300)
    (folder / "smoke.mjs").write_text(SCRIPT)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(config_for(tiny_model(tmp_path_factory))) as s:
        yield s


def test_node_openai_client_chat_and_stream(node_openai: Path, server: Running) -> None:
    env = {**os.environ, "BASE_URL": f"{server.url}/v1", "MODEL": MODEL_ID}
    r = subprocess.run(["node", str(node_openai / "smoke.mjs")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    expected = server.served.llm.chat([{"role": "user", "content": "The cat sat on the mat"}], max_tokens=6, seed=3,
                                      ignore_eos=True).text
    assert out["plain"] == out["streamed"] == expected and out["finish"] == "length"
    assert out["usage"]["completion_tokens"] == 6 and out["usage"]["total_tokens"] > 6
    assert out["notFound"] == [404, "NotFoundError"]
