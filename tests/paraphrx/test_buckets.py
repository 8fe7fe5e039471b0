import pytest

from paraphrx.buckets import BucketSpecError, buckets_of_split, parse_bucket_spec, split_name


@pytest.mark.parametrize(
    "spec, expected",
    [("1", (1,)), ("1-3", (1, 2, 3)), ("1,3,5", (1, 3, 5)), ("all", (1, 2, 3, 4, 5)), (" 2-2 ", (2,)), ("5,1", (1, 5))],
)
def test_parse_valid_specs(spec, expected):
    assert parse_bucket_spec(spec) == expected


@pytest.mark.parametrize("spec", ["0", "6", "3-1", "1-", "1-2-3", "x", "", "1,1", "1,", "-1", "1-6"])
def test_parse_rejects_bad_specs(spec):
    with pytest.raises(BucketSpecError):
        parse_bucket_spec(spec)


@pytest.mark.parametrize(
    "buckets, name",
    [
        ((1,), "bucket1"),
        ((1, 2), "bucket1_2"),
        ((1, 2, 3, 4, 5), "bucket1_5"),
        ((1, 3, 5), "bucket1and3and5"),
        ((2, 3), "bucket2_3"),
    ],
)
def test_split_names_round_trip(buckets, name):
    assert split_name(buckets) == name
    assert buckets_of_split(name) == buckets


def test_list_and_range_share_a_name():
    assert split_name(parse_bucket_spec("1,2,3")) == split_name(parse_bucket_spec("1-3")) == "bucket1_3"


@pytest.mark.parametrize("name", ["validation", "bucket", "bucket1_1", "bucket3_1", "bucket1and2", "bucket6"])
def test_buckets_of_split_rejects_non_canonical(name):
    with pytest.raises(BucketSpecError):
        buckets_of_split(name)
