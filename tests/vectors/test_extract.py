import pytest

from ownllm.vectors.extract import ExtractError, extract_text
from tests.vectors.documents import HTML, pdf_bytes


def test_text_and_markdown_are_read_as_they_are():
    assert extract_text(b"# Title\n\nSome *text*.", "notes.md") == "# Title\n\nSome *text*."
    assert extract_text("\ufeffcafé".encode("utf-8"), "a.txt") == "café"  # BOM dropped


def test_pdf_pages_are_extracted_by_pypdf():
    text = extract_text(pdf_bytes(["The launch date is May 4.", "Budget: 12 million."]), "plan.pdf")
    assert "The launch date is May 4." in text and "Budget: 12 million." in text
    assert text.index("launch") < text.index("Budget")


def test_pdf_is_recognised_by_its_bytes_whatever_its_name():
    assert "May 4" in extract_text(pdf_bytes(["May 4"]), "upload.bin")


def test_html_keeps_the_text_and_drops_scripts_and_styles():
    text = extract_text(HTML, "policy.html")
    assert "Leave policy" in text and "30 days of paid leave" in text
    assert "Carry over: 5 days" in text and "Sick leave" in text
    assert "secret" not in text and "color" not in text


@pytest.mark.parametrize(
    "data, name, code",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "logo.png", "unsupported_file"),
        (b"\xff\xfe\xfa latin", "a.txt", "unsupported_file"),
        (b"   \n\n ", "blank.txt", "invalid_file"),
        (b"%PDF-1.4 this is not really a pdf", "broken.pdf", "invalid_file"),
        (pdf_bytes([""]), "empty.pdf", "invalid_file"),
    ],
)
def test_what_cannot_be_read_fails_with_openais_codes(data, name, code):
    with pytest.raises(ExtractError) as e:
        extract_text(data, name)
    assert e.value.code == code
    assert name in e.value.message or "PDF" in e.value.message
