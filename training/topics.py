"""Leave-topic-out generalisation proxy from Flickr8K alone (issue 16, item 4).

A *topic* is a set of words. An image belongs to it when ANY of its captions contains one
of the words (lower-cased ``[a-z]+`` tokens). A leave-topic-out (LTO) run drops every
*training* image of the topic (with all its captions) and is then evaluated on the *test*
images of the topic (gallery = those images and their captions only): concepts the model
never saw paired, in the spirit of the hidden cross-dataset check. The same topic subset is
evaluated for every run, so a standard run's number on it is the in-distribution reference.

Topic ``"snow_bike_horse"`` (fixed before any result was seen; counts on Flickr8K):
train 876 images (14.6 %), dev 148, test 134.
"""
from __future__ import annotations

import re

import numpy as np

from .data import Corpus

TOPICS: dict[str, frozenset[str]] = {
    "snow_bike_horse": frozenset(
        "snow snowy ski skier skiers skiing snowboard snowboarder snowboarders snowboarding sled sledding "
        "snowman snowball bike bikes bicycle bicycles biker bikers cyclist cyclists bicyclist bicyclists "
        "biking bmx horse horses pony rider rodeo".split()),
}
DEFAULT_TOPIC = "snow_bike_horse"
_WORD = re.compile(r"[a-z]+")


def topic_images(corpus: Corpus, topic: str) -> np.ndarray:
    """``(N,) bool`` over ``corpus.image_paths``: any caption names a word of ``topic``.

    Raises:
        ValueError: unknown topic name.
    """
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}; expected one of {sorted(TOPICS)}")
    words = TOPICS[topic]
    hit = np.zeros(len(corpus.image_paths), bool)
    for cap, i in zip(corpus.captions, corpus.caption_image_ids):
        if not hit[i] and words.intersection(_WORD.findall(cap.lower())):
            hit[i] = True
    return hit


def split_images(corpus: Corpus, split: str, topic: str, inside: bool) -> np.ndarray:
    """Sorted corpus image indices of ``split`` inside (or outside) ``topic``."""
    idx = corpus.splits[split]
    hit = topic_images(corpus, topic)[idx]
    return idx[hit if inside else ~hit]
