"""What the tests share besides fixtures (those are in tests/conftest.py): real small images, project copies in
temporary git + DVC repositories, the commands run in them, hostile files, the review page in Chromium."""
