"""Question answering with a triplet loss over three inputs and shared encoders.

The Keras 2 recipe fed (question, right answer, wrong answer) through shared
encoders and added a margin ranking loss with a Lambda "loss layer" and
``add_loss``. With lossplug the three encodings are ordinary model outputs and
the ``triplet`` plugin (mode="explicit") reads them by name:

    loss_i = max(0, margin + d(q_i, right_i) - d(q_i, wrong_i)),  d = 1 - cosine

After training, the question encoder and the answer encoder are used on their
own: answers are ranked by cosine similarity to each question.

Data: a synthetic corpus of token sequences about ``TOPICS`` topics. A question
and its right answer share a topic (drawn from overlapping word distributions);
a wrong answer comes from another topic.

Run: python examples/qa_triplet.py [--smoke]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
from keras import ops

VOCAB, LENGTH, TOPICS, DIM = 400, 12, 20, 32


def make_corpus(n: int, topic_words: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids for n (question, right answer, wrong answer) triples, plus their topics.

    ``topic_words[t]`` are the 30 favourite words of topic t; 40% of the tokens
    of every sentence are noise words drawn from the whole vocabulary.
    """

    def sentences(topics: np.ndarray) -> np.ndarray:
        words = topic_words[topics[:, None], rng.integers(0, 30, size=(len(topics), LENGTH))]
        noise = rng.integers(1, VOCAB, size=words.shape)
        return np.where(rng.random(words.shape) < 0.4, noise, words).astype("int32")

    topic = rng.integers(0, TOPICS, size=n)
    other = (topic + rng.integers(1, TOPICS, size=n)) % TOPICS  # always a different topic
    return {
        "question": sentences(topic),
        "right": sentences(topic),
        "wrong": sentences(other),
        "topic": topic,
    }


def encoder(name: str) -> keras.Model:
    """Token ids (B, LENGTH) -> a DIM-dimensional encoding (B, DIM)."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 64)(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(tokens, keras.layers.Dense(DIM)(x), name=name)


def top1_accuracy(q_encoder: keras.Model, a_encoder: keras.Model, data: dict) -> float:
    """Fraction of questions whose right answer ranks first among all right answers."""
    q = q_encoder.predict(data["question"], verbose=0)
    a = a_encoder.predict(data["right"], verbose=0)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    best = np.argmax(q @ a.T, axis=1)  # (questions, answers) cosine similarities
    # A right answer of the same topic counts: the corpus cannot tell them apart.
    return float(np.mean(data["topic"][best] == data["topic"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    topic_words = rng.integers(1, VOCAB, size=(TOPICS, 30))
    train = make_corpus(256 if args.smoke else 4000, topic_words, rng)
    test = make_corpus(100 if args.smoke else 500, topic_words, rng)

    # Two encoders: one for questions, one shared by the right and the wrong answers.
    question_encoder, answer_encoder = encoder("question_encoder"), encoder("answer_encoder")
    inputs = {
        name: keras.Input((LENGTH,), dtype="int32", name=name)
        for name in ("question", "right", "wrong")
    }
    # Outputs are named by their layer; Identity layers give the two calls of the
    # shared answer encoder distinct names the plugin can be bound to.
    outputs = [
        keras.layers.Identity(name="q_vec")(question_encoder(inputs["question"])),
        keras.layers.Identity(name="right_vec")(answer_encoder(inputs["right"])),
        keras.layers.Identity(name="wrong_vec")(answer_encoder(inputs["wrong"])),
    ]
    model = lossplug.LossModel(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        # One model-wide term: the triplet plugin reads three outputs by name.
        loss=lossplug.use(
            "triplet",
            mode="explicit",
            metric="cosine",
            margin=0.4,
            bind={"anchor": "q_vec", "positive": "right_vec", "negative": "wrong_vec"},
        ),
    )
    before = top1_accuracy(question_encoder, answer_encoder, test)
    x = {name: train[name] for name in ("question", "right", "wrong")}
    # No targets: the loss only compares encodings, so fit(x) is enough.
    history = model.fit(x, epochs=2 if args.smoke else 10, batch_size=64, verbose=2)
    after = top1_accuracy(question_encoder, answer_encoder, test)

    # Inference: the encoders are ordinary Keras models, saved and served separately.
    q = ops.normalize(question_encoder(test["question"]), axis=-1)
    right = ops.normalize(answer_encoder(test["right"]), axis=-1)
    wrong = ops.normalize(answer_encoder(test["wrong"]), axis=-1)
    cos_right = float(ops.convert_to_numpy(ops.mean(ops.sum(q * right, axis=-1))))
    cos_wrong = float(ops.convert_to_numpy(ops.mean(ops.sum(q * wrong, axis=-1))))
    print(
        f"first epoch triplet {history.history['triplet'][0]:.4f} -> last "
        f"{history.history['triplet'][-1]:.4f}; active triplets at the end "
        f"{history.history['triplet_active_fraction'][-1]:.2f}"
    )
    print(
        f"mean cosine(question, right answer) {cos_right:.3f}, "
        f"cosine(question, wrong answer) {cos_wrong:.3f}"
    )
    print(f"top-1 answer accuracy: {before:.3f} before training, {after:.3f} after")


if __name__ == "__main__":
    main()
