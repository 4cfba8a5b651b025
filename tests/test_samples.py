from transferkit.data.samples import sample_photo, sample_photos


def test_sample_photos_are_real_files():
    photos = sample_photos()
    # scikit-image is a test dependency: its cat photo must be found.
    assert "chelsea" in photos and photos["chelsea"].is_file()
    assert all(p.is_file() for p in photos.values())
    assert sample_photo("no_such_photo") is None


def test_finding_the_sample_photos_imports_none_of_their_packages():
    """The engine decision reads them at every start: finding scikit-learn's photos must not import scikit-learn."""
    import subprocess
    import sys

    code = ("import sys; from transferkit.data.samples import sample_photos; found = sample_photos(); "
            "print(len(found), sorted(m for m in ('sklearn', 'skimage', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert int(out[0]) >= 2 and out[1].strip() == "[]"
