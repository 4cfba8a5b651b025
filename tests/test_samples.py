from transferkit.data.samples import sample_photo, sample_photos


def test_sample_photos_are_real_files():
    photos = sample_photos()
    # scikit-image is a test dependency: its cat photo must be found.
    assert "chelsea" in photos and photos["chelsea"].is_file()
    assert all(p.is_file() for p in photos.values())
    assert sample_photo("no_such_photo") is None
