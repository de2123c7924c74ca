"""POST /v1/images/edits (multipart and JSON) and /v1/images/variations."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from openai import OpenAI

from support import BASE_CONFIG, data_url, decode_b64, make_image, make_mask


def test_edit_one_image(client: OpenAI) -> None:
    src = make_image(300, 200, color=(10, 200, 10))
    result = client.images.edit(model="gpt-image-1", image=("photo.png", src, "image/png"), prompt="make it red")
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == ("PNG", (300, 200))  # size auto: the input's


def test_edit_list_of_images_sent_as_image_brackets(client: OpenAI) -> None:
    images = [
        ("a.png", make_image(512, 512, "PNG"), "image/png"),
        ("b.jpg", make_image(128, 128, "JPEG"), "image/jpeg"),
        ("c.webp", make_image(96, 96, "WEBP"), "image/webp"),
    ]
    result = client.images.edit(model="gpt-image-1", image=images, prompt="combine", size="1024x1024", n=2)
    assert len(result.data) == 2
    for d in result.data:
        assert decode_b64(d.b64_json).size == (1024, 1024)


def test_edit_repeated_image_parts_without_brackets(server) -> None:
    files = [("image", ("a.png", make_image(64, 64), "image/png")), ("image", ("b.png", make_image(64, 64), "image/png"))]
    r = httpx.post(f"{server.base_url}/v1/images/edits", files=files, data={"prompt": "x", "model": "gpt-image-1"})
    assert r.status_code == 200, r.text
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (64, 64)


def test_mask_changes_only_the_transparent_area(client: OpenAI) -> None:
    w, h = 256, 256
    src = make_image(w, h, color=(10, 200, 10))
    box = (0, 160, 256, 256)  # the bottom strip is editable; the caption is at the top
    result = client.images.edit(
        model="gpt-image-1", image=("i.png", src, "image/png"), mask=("m.png", make_mask(w, h, box), "image/png"), prompt="sky"
    )
    out = np.asarray(decode_b64(result.data[0].b64_json).convert("RGB")).astype(int)
    original = np.asarray(decode_b64(data_url(src).split(",")[1]).convert("RGB")).astype(int)
    inside = np.abs(out[160:, :] - original[160:, :]).sum(axis=2)
    outside = np.abs(out[100:160, :] - original[100:160, :]).sum(axis=2)
    assert (inside > 30).mean() > 0.3, "the masked area is repainted"
    assert outside.max() == 0, "pixels outside the mask are untouched"


def test_edit_output_format_and_compression(client: OpenAI) -> None:
    result = client.images.edit(
        model="gpt-image-1",
        image=("i.png", make_image(200, 200), "image/png"),
        prompt="x",
        output_format="webp",
        output_compression=40,
        size="1024x1024",
    )
    img = decode_b64(result.data[0].b64_json)
    assert (img.format, img.size) == ("WEBP", (1024, 1024))


def test_edit_streams(client: OpenAI) -> None:
    events = list(
        client.images.edit(
            model="gpt-image-1", image=("i.png", make_image(128, 128), "image/png"), prompt="x", stream=True, partial_images=1
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert decode_b64(events[-1].b64_json).size == (128, 128)


def test_dalle2_edit_default_url(client: OpenAI) -> None:
    result = client.images.edit(model="dall-e-2", image=("i.png", make_image(256, 256), "image/png"), prompt="x", size="256x256")
    r = httpx.get(result.data[0].url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_json_edit_with_data_urls_and_mask(server) -> None:
    body = {
        "model": "gpt-image-1",
        "prompt": "x",
        "images": [
            {"image_url": data_url(make_image(128, 128))},
            {"image_url": data_url(make_image(32, 32, "JPEG"), "image/jpeg")},
        ],
        "mask": {"image_url": data_url(make_mask(128, 128, (0, 0, 64, 64)))},
        "output_format": "jpeg",
    }
    r = httpx.post(f"{server.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 200, r.text
    img = decode_b64(r.json()["data"][0]["b64_json"])
    assert (img.format, img.size) == ("JPEG", (128, 128))


@pytest.fixture
def image_host() -> Iterator[str]:
    """A plain HTTP server on loopback that serves one PNG at /cat.png and redirects /go."""
    payload = make_image(96, 64)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/go":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
                return
            if self.path != "/cat.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_json_edit_fetches_http_url_when_private_networks_allowed(make_server, image_host: str) -> None:
    running = make_server({**BASE_CONFIG, "server": {"fetch": {"allow_private_networks": True}}})
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": f"{image_host}/go"}]}
    r = httpx.post(f"{running.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert decode_b64(r.json()["data"][0]["b64_json"]).size == (96, 64)
    missing = httpx.post(
        f"{running.base_url}/v1/images/edits", json={**body, "images": [{"image_url": f"{image_host}/nope"}]}, timeout=30
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "images[0]"
    assert missing.json()["error"]["code"] == "image_url_unreachable"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/cat.png",
        "http://localhost:{port}/cat.png",
        "http://[::1]:{port}/cat.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0:{port}/cat.png",
    ],
)
def test_json_edit_refuses_non_public_addresses_by_default(server, image_host: str, url: str) -> None:
    port = image_host.rsplit(":", 1)[1]
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": url.format(port=port)}]}
    r = httpx.post(f"{server.base_url}/v1/images/edits", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "images[0]" and err["code"] == "invalid_image_url"


SDK_VARIATION_DEPRECATED = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@SDK_VARIATION_DEPRECATED
def test_variation(client: OpenAI) -> None:
    src = make_image(256, 256, color=(200, 30, 30))
    result = client.images.create_variation(
        model="dall-e-2", image=("v.png", src, "image/png"), n=2, size="512x512", response_format="b64_json"
    )
    assert len(result.data) == 2
    imgs = [decode_b64(d.b64_json) for d in result.data]
    assert all((i.format, i.size) == ("PNG", (512, 512)) for i in imgs)
    assert not np.array_equal(np.asarray(imgs[0]), np.asarray(imgs[1]))


@SDK_VARIATION_DEPRECATED
def test_variation_url(client: OpenAI) -> None:
    result = client.images.create_variation(
        model="test-pattern", image=io.BytesIO(make_image(64, 64, "JPEG")), response_format="url"
    )
    r = httpx.get(result.data[0].url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
