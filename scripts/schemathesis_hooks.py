"""Schemathesis hooks for imgfleet's OpenAPI document (loaded by scripts/schemathesis).

The document marks uploaded images with the string format `image-base64`: base64 of an image
file. Schemathesis cannot know how to make one, so this teaches it: small PNG, JPEG and WebP
files of random sizes and pixels, sometimes as data URLs, the forms the API accepts. Strings
that are not images are still generated for the negative cases (they violate the format).
"""

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _image_file(width, height, seed, kind, data_url):
    image = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    image.putpixel((width // 2, height // 2), (255 - seed % 256, seed % 256, 128))
    out = io.BytesIO()
    image.save(out, format=kind)
    encoded = base64.b64encode(out.getvalue()).decode()
    return f"data:image/{kind.lower()};base64,{encoded}" if data_url else encoded


schemathesis.openapi.format(
    "image-base64",
    st.builds(
        _image_file,
        st.integers(1, 96),
        st.integers(1, 96),
        st.integers(0, 2**16),
        st.sampled_from(["PNG", "JPEG", "WEBP"]),
        st.booleans(),
    ),
)


# The HTTP server takes URLs of up to 64 KiB and answers 414 beyond (the document says so).
# A generated filter in the query string can be far longer (every non-ASCII character becomes
# up to 18 bytes once JSON-escaped and percent-encoded); such cases test HTTP, not the API's
# contract, so they are not generated.
MAX_QUERY_BYTES = 60_000


@schemathesis.hook
def filter_query(context, query):
    import json
    from urllib.parse import urlencode

    if not query:
        return True
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in query.items()}
    return len(urlencode(text)) <= MAX_QUERY_BYTES
