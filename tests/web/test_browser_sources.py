"""The playground answering from a vector store: the sources the answer was grounded in
are listed under it, numbered as the answer cites them, with their file and text; the
retrieved text is shown as text (a document's markup never becomes the page's); and the
store list offers the key's own stores only.

The server is the real app over the tenants' database and a counting backend, the word
embedder standing in for MiniLM (tests/vectors/word_embedder.py), so which chunk a
question finds is known; the ingestion worker runs here."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.backends.scripted import counting_backend
from ownllm.models.embedding import LazyEmbeddingModel
from ownllm.models.tokenizer import Tokenizer
from ownllm.vectors.ingest import Ingester
from tests.server import serve_app
from tests.tenants import gateway_state
from tests.vectors.word_embedder import WordEmbedder
from tests.web.browser import sign_in

LAUNCH = b"The rocket launch is planned for the fourth of May. <img src=x onerror=alert(1)>"
KITCHEN = b"The coffee machine is cleaned every Friday by the facilities team."


def make_store(client, headers, name: str, docs: dict[str, bytes]) -> str:
    store = client.post("/v1/vector_stores", json={"name": name}, headers=headers).json()["id"]
    for filename, content in docs.items():
        r = client.post(
            "/v1/files",
            files={"file": (filename, content)},
            data={"purpose": "assistants"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        attach = {"file_id": r.json()["id"]}
        r = client.post(f"/v1/vector_stores/{store}/files", json=attach, headers=headers)
        assert r.status_code == 200, r.text
    return store


@pytest.fixture
def sources_server(tmp_path, tiny_model_dir, two_tenants):
    """(base URL, acme's store id, globex's store id), both stores ingested."""
    embedder = WordEmbedder()
    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    state = gateway_state(tmp_path, two_tenants, backend=counting_backend(tokenizer))
    state.tokenizer = tokenizer
    state.embedding_model = LazyEmbeddingModel(embedder)
    app = create_app(state, start_engine=False)
    try:
        with serve_app(app, lifespan="off") as url, httpx.Client(base_url=url) as client:
            mine = make_store(
                client, two_tenants.a.headers, "handbook",
                {"launch.txt": LAUNCH, "kitchen.md": KITCHEN},
            )  # fmt: skip
            theirs = make_store(client, two_tenants.b.headers, "globex-only", {"x.txt": KITCHEN})
            worker = Ingester(state.db, state.data_dir, lambda: embedder)
            while worker.run_once():
                pass
            yield url, mine, theirs
    finally:
        app.state.gateway.ledger.close()


def test_an_answer_from_a_vector_store_lists_its_sources(sources_server, page, two_tenants):
    base_url, mine, theirs = sources_server
    sign_in(page, base_url, key=two_tenants.a.key)
    stores = page.get_by_label("Answer from a vector store")
    page.wait_for_selector(f"select[name=vector-store] option[value={mine}]", state="attached")
    values = stores.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert values == ["", mine] and theirs not in values  # globex's store is not offered
    assert "handbook (2 files)" in stores.locator("option").nth(1).text_content()
    page.get_by_label("Max tokens").fill("3")

    # without a store: an answer with no sources
    page.get_by_role("textbox", name="Message").fill("When is the rocket launch?")
    page.get_by_role("button", name="Send").click()
    page.locator(".msg.assistant .stats").first.wait_for()
    assert page.locator(".msg.assistant .sources").count() == 0

    stores.select_option(mine)
    page.get_by_role("textbox", name="Message").fill("When is the rocket launch?")
    page.get_by_role("button", name="Send").click()
    sources = page.get_by_role("region", name="Sources")
    sources.wait_for()
    items = sources.locator("li")
    assert items.count() == 2  # both files share words with the question
    first = items.nth(0)
    assert first.locator(".source-file").text_content() == "[1] launch.txt"
    assert "fourth of May" in first.locator(".source-text").text_content()
    assert "score 0." in first.text_content() or "score 1.00" in first.text_content()
    assert items.nth(1).locator(".source-file").text_content() == "[2] kitchen.md"
    # the document's markup is shown as its text, never made into an element (the chunk
    # ends at its last word, so without the closing ")>")
    assert "<img src=x onerror=alert(1" in first.text_content()
    assert page.locator(".msg img").count() == 0
    assert page.locator(".msg.assistant").count() == 2
