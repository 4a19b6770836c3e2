from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.mime_parser import parse
from streams.spam_model import (COUNTS, DIM, FEATURE_VERSION, FOOTER_WORDS, NB_GROUPS, Matrix, SpamModel, Stumps,
                                _index, _shape, counts, features, letter_words, fit, fit_nb, fit_stumps, fold_of, grouped_features,
                                GRAM_CHARS, gram_ids, grouped_tokens, sender_content, tokens)
from streams.training import HARD_HAM_WEIGHT, REPORTED_FPRS, Example, choose_threshold, prepare, run_training
from tests.streams.scoring_fixtures import HAM_WORDS, SPAM_WORDS, plain_message, training_corpus


def test_shipped_model_loads_with_metadata():
    model = SpamModel.load()
    assert model.meta["feature_version"] == FEATURE_VERSION and model.meta["dim"] == DIM
    assert model.weights.shape == (DIM,) and model.weights.dtype == np.float32
    assert model.nb_weights.shape == (DIM,) and model.nb_weights.dtype == np.float32
    assert model.gram_nb_weights.shape == (DIM,) and model.gram_nb_weights.dtype == np.float32
    # Fitted on other columns than the tokens' Bayes: not a copy of it.
    assert not np.array_equal(model.nb_weights, model.gram_nb_weights)
    # The regression reads character grams, which no Bayes group holds: it has weights where the Bayes has none.
    raw = plain_message(body="Click below to claim your exclusive reward today.")
    _, groups, with_grams, _ = grouped_features(parse(raw))
    grams_only = np.array(sorted(set(with_grams).difference(*groups)))
    assert grams_only.size and np.count_nonzero(model.weights[grams_only]) > 0
    assert model.meta["trained_on"]["messages"] > 1000
    assert 0 < model.meta["cv"]["spam_caught"] <= 1
    assert model.stumps.feature.size > 0


def test_predictions_are_deterministic_across_loads():
    raw = plain_message(body="Please review the release notes before the meeting.")
    first = SpamModel.load().logit(parse(raw), 0.5)
    second = SpamModel.load().logit(parse(raw), 0.5)
    assert first == second


def test_features_are_stable_sorted_indices():
    msg = parse(plain_message())
    ids = features(msg)
    assert ids == sorted(set(ids)) and all(0 <= i < DIM for i in ids)
    # crc32-based hashing does not depend on PYTHONHASHSEED.
    assert ids == features(parse(plain_message()))


def test_relay_collector_list_and_date_headers_are_not_features():
    plain = plain_message()
    # Headers a relay, a corpus collector or a mailing list adds, and a different date.
    added = plain_message(
        Received="from mx.example.net by relay.example.com; Tue, 03 Sep 2024 10:00:01 +0000",
        Return_Path="<bounce@example.org>", Delivered_To="bob@example.net",
        X_Spam_Status="Yes, score=9.9", X_Spam_Level="*********", X_Keywords="junk",
        List_Id="<team.lists.example.org>", List_Unsubscribe="<mailto:leave@example.org>",
        Precedence="bulk", Sender="team-bounces@example.org", Errors_To="team-owner@example.org",
    ).replace(b"Tue, 03 Sep 2024 10:00:00", b"Sat, 01 Jan 2000 00:00:00")
    assert features(parse(added)) == features(parse(plain))


_LETTER = "Hello Bob,\nthe patch is in; see https://www.example.org/patch for the build.\n\nAlice\n"
_MAILMAN_FOOTER = ("\n-------------------------------------------------------\n"
                   "This sf.net email is sponsored by: ThinkGeek\nhttp://thinkgeek.com/sf\n"
                   "_______________________________________________\nTeam-talk mailing list\n"
                   "Team-talk@lists.example.net\nhttps://lists.example.net/lists/listinfo/team-talk\n")
_ILUG_FOOTER = ("\n-- \nIrish Linux Users' Group: ilug@linux.ie\n"
                "http://www.linux.ie/mailman/listinfo/ilug for (un)subscription information.\n"
                "List maintainer: listmaster@linux.ie\n")


@pytest.mark.parametrize("footer", [_MAILMAN_FOOTER, _ILUG_FOOTER])
@pytest.mark.parametrize("subject", ["[team-talk] Build", "Re: [ILUG] Build", "RE:Fwd: [x] Build"])
def test_a_mailing_lists_subject_tag_and_footer_are_not_features(subject, footer):
    """A list's tag and footer say which lists the corpus's collectors read, not who wrote the mail."""
    bare = parse(plain_message(body=_LETTER, subject=subject.rpartition("] ")[0].rpartition("[")[0] + "Build"))
    listed = parse(plain_message(body=_LETTER + footer, subject=subject))
    assert grouped_features(listed) == grouped_features(bare)
    assert counts(listed, 10) == counts(bare, 10)
    # A spam forwarded to a list as text keeps its closing MIME delimiter above the footer.
    forwarded = parse(plain_message(body=_LETTER + "\n--DeathToSpamDeathToSpam--\n" + footer, subject=subject))
    assert grouped_features(forwarded) == grouped_features(bare)


def test_what_a_sender_writes_about_its_own_list_stays():
    own = ("You receive this as a subscriber to our mailing list.\n"
           "_______________________________________________\nTo be removed reply with REMOVE as subject\n")
    body, subject, *_ = grouped_tokens(parse(plain_message(body=_LETTER + own, subject="Deals [today only]")))
    assert {"remove", "bl:remove", "bl:subject", "subscriber"} <= body
    assert {"s:today", "s:deals"} <= subject
    # A bracketed tag anywhere but first is the sender's too.
    assert sender_content(parse(plain_message(subject="Offer [ref 4411]"))).subject == "Offer [ref 4411]"


def test_the_closing_words_are_tokens_of_their_own():
    words = [f"w{i:03d}" for i in range(100)]
    body, *_ = grouped_tokens(parse(plain_message(body=" ".join(words))))
    assert set(words) <= body
    closing = {t for t in body if t.startswith("bl:")}
    assert closing == {f"bl:{w}" for w in words[-FOOTER_WORDS:]}
    short, *_ = grouped_tokens(parse(plain_message(body="to leave reply remove")))
    assert {"bl:to", "bl:leave", "bl:reply", "bl:remove"} <= short


def test_words_and_charsets_of_scripts_no_training_ham_uses_are_not_tokens():
    """train.tsv's mail in Chinese, Japanese or Korean is all spam: those words and
    charsets would only teach the model that the language is spam (v12)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Sato <sato@example.jp>", "bob@example.com", "会議 agenda"
    msg.set_content("田中さん、来週の会議 agenda は release 4.2 です。\n", charset="iso-2022-jp")
    groups = grouped_tokens(parse(bytes(msg)))
    everything = set().union(*groups)
    assert not [t for t in everything if re.search("[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]", t)]
    assert not [t for t in everything if t.startswith("cs:")]
    # What the sender wrote in Latin letters and digits is read as before.
    assert {"agenda", "release", "d:9.9"} <= groups[0] and "s:agenda" in groups[1]
    latin = EmailMessage()
    latin["Subject"] = "Hi"
    latin.set_content("Café à Paris\n", charset="iso-8859-1")
    assert {"café", "cs:iso-8859-1"} <= set().union(*grouped_tokens(parse(bytes(latin))))


def test_long_words_share_a_stem_and_numbers_count_by_their_shape():
    body, *_ = grouped_tokens(parse(plain_message(
        body="Refinancing today: call 1-800-555-0199 and save 25% or 19.95 on rates")))
    assert {"refinancing", "p:refin"} <= body
    other, *_ = grouped_tokens(parse(plain_message(body="we refinanced it")))
    assert "p:refin" in other
    # Words shorter than STEM_MIN_CHARS have no stem of their own.
    assert not {"p:today", "p:rates"} & body
    assert {t for t in body if t.startswith("d:")} == {"d:9-9+-9+-9+", "d:9+%", "d:9+.9+"}


def test_a_shape_is_character_classes_with_runs_collapsed():
    assert _shape("a1b2c3@x") == "a9a9a9@a"
    assert _shape("Bob.Smith99--2024") == "Aa+.Aa+9+-+9+"
    assert _shape("x\n\ny") == "a\n\na"  # as the pattern's "." reads it: a line end is no run


def test_sender_tokens_compare_from_message_id_and_links():
    own = tokens(parse(plain_message(body="Read it at https://www.example.org/news")))
    assert {"mid:fromdom-same", "cu:from-in-urls", "frdisp:name"} <= own
    foreign = tokens(parse(plain_message(
        body="Buy at http://cheap.example.biz/x", sender="deals@example.org", Reply_To="x@example.ru",
    ).replace(b"<1234.5678@example.org>", b"<A1B2C3@mailer.example.info>")))
    assert {"mid:fromdom-diff", "cu:from-not-in-urls", "frdisp:none", "rt:diff"} <= foreign
    assert "mid:bad" in tokens(parse(plain_message().replace(b"<1234.5678@example.org>", b"no brackets")))


def _sender_group_tokens(raw: bytes, *prefixes: str) -> set[str]:
    return {t for t in grouped_tokens(parse(raw))[NB_GROUPS.index("sender")] if t.startswith(prefixes)}


def _named_sender_tokens(raw: bytes) -> set[str]:
    return _sender_group_tokens(raw, "fn:", "fdm:")


def test_sender_tokens_say_whether_the_text_names_the_sender():
    assert _named_sender_tokens(plain_message()) == {"fn:out", "fdm:out"}
    assert _named_sender_tokens(plain_message(body="See you,\nALICE\n")) == {"fn:in", "fdm:out"}
    assert _named_sender_tokens(plain_message(body="Alice's notes\n")) == {"fn:in", "fdm:out"}
    assert _named_sender_tokens(plain_message(body="Malice aforethought\n")) == {"fn:out", "fdm:out"}
    assert _named_sender_tokens(plain_message(body="Order at www.example.org\n")) == {"fn:out", "fdm:in"}
    # No display name, or a name of fewer than three letters: nothing to look for.
    assert _named_sender_tokens(plain_message(sender="deals@example.org")) == {"fdm:out"}
    assert _named_sender_tokens(plain_message(sender="Al <al@example.org>", body="Al here\n")) == {"fdm:out"}
    # Nor is a domain's first label under three letters (ab.com).
    assert _named_sender_tokens(plain_message(sender="Team Ab <news@ab.com>", body="ab team\n")) == {"fn:in"}
    # The sender named only in a list's footer is the list's doing.
    listed = plain_message(body=_LETTER.replace("Alice", "A.") + _ILUG_FOOTER, sender="Ilug Linux <x@linux.ie>")
    assert _named_sender_tokens(listed) == {"fn:out", "fdm:out"}


def _recipient_tokens(raw: bytes) -> set[str]:
    return _sender_group_tokens(raw, "rc:")


def test_recipient_tokens_say_whether_the_sender_named_the_addressee():
    assert _recipient_tokens(plain_message(body="This issue was sent to Bob@Example.NET.\n")) == {"rc:named"}
    html = EmailMessage()
    html["From"], html["To"], html["Subject"] = "Alice <alice@example.org>", "bob@example.net", "News"
    html.set_content('<p>Sent to <a href="mailto:bob@example.net">you</a></p>', subtype="html")
    assert _recipient_tokens(html.as_bytes()) == {"rc:named"}
    assert _recipient_tokens(plain_message()) == {"rc:local"}  # "Hello Bob,"
    assert _recipient_tokens(plain_message(body="Bobby, the bobsleigh is here.\n")) == set()
    dotted = plain_message(body="Dear j.doe_2,\n").replace(b"bob@", b"j.doe_2@")
    assert _recipient_tokens(dotted) == {"rc:local"}
    assert _recipient_tokens(dotted.replace(b"Dear j", b"Dear aj")) == set()
    assert _recipient_tokens(plain_message().replace(b"To: bob@example.net\n", b"")) == {"rc:none"}
    # A local part shorter than three letters is found in too many words to say anything.
    assert _recipient_tokens(plain_message(body="Hi Al,\n").replace(b"bob@", b"al@")) == set()
    # The address in a list's footer is the list's, not what its sender wrote.
    listed = plain_message(body=_LETTER.replace("Bob", "all") + _ILUG_FOOTER)
    assert _recipient_tokens(listed.replace(b"bob@example.net", b"ilug@linux.ie")) == set()
    # The address's own words are not tokens: they are the corpus recipients', not a gateway user's.
    assert not {"bob", "f:bob", "s:bob"} & tokens(parse(plain_message(body="See you.\n")))


def test_html_structure_becomes_its_own_token_group():
    markup = ('<html><body><table width=600><tr><td bgcolor="#FFFFFF">'
              '<font size="+2" color="#FF0000">Act now</font>'
              '<p style="display: none; font-size:1px">hidden words</p></td></tr></table></body></html>')
    raw = plain_message(body="Act now")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Alice <alice@example.org>", "bob@example.net", "Hi"
    msg.set_content(markup, subtype="html")
    html = tokens(parse(msg.as_bytes()))
    assert {"ht:table", "ht:font", "ha:font.size", "hv:size=+2", "hv:color=#ff0000", "hv:width=600",
            "hv:bgcolor=#ffffff", "ha:p.style", "hc:display=none", "hc:font-size=1px"} <= html
    assert not any(t.startswith(("ht:", "ha:", "hv:", "hc:")) for t in tokens(parse(raw)))
    _, groups, _, _ = grouped_features(parse(msg.as_bytes()))
    assert _index("hv:size=+2") in groups[NB_GROUPS.index("html")]
    assert _index("hv:size=+2") not in groups[NB_GROUPS.index("structure")]


def test_second_stage_sees_links_per_hundred_words():
    pitch = parse(plain_message(body="Cheap pills at http://a.example.biz and http://b.example.biz now"))
    letter = parse(plain_message(body=" ".join(["word"] * 98) + " http://a.example.org/x"))
    # The links' own letters ("http", "example", "biz") are words too: 11 and 101 words.
    for msg, share in ((pitch, 100 * 2 / 11), (letter, 100 * 1 / 101)):
        values = counts(msg, 10)
        assert len(values) == len(COUNTS)
        assert values[COUNTS.index("urls_per_100_words")] == pytest.approx(share)
    assert counts(parse(plain_message(body="")), 0)[COUNTS.index("urls_per_100_words")] == 0.0


# Letters, their neighbours in the byte table and in Unicode, and letters that only look ASCII.
_WORD_PIECES = ["a", "Z", "ab", "CAPS", "Mixed", "@", "[", "`", "{", "_", "0", "9", " ", "\n", "'", "-",
                "é", "É", "ß", "ſ", "K", "İ", "ａ", "\udc80", "\x7f", "\xff"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_WORD_PIECES), max_size=30).map("".join) | st.text(max_size=200))
@example("Don't SHOUT at café-bar owners, Kelvin")
def test_letter_words_are_what_the_ascii_letter_pattern_finds(text):
    assert [w.decode() for w in letter_words(text)] == re.findall(r"[A-Za-z]{2,}", text)


def test_stumps_step_tables_agree_with_the_sum_of_stumps():
    stumps = Stumps(np.array([0, 1, 0, 0]), np.array([1.0, 5.0, 3.0, 1.0]),
                    np.array([-0.5, 0.25, -1.0, 0.125]), np.array([0.5, -0.25, 1.0, -0.125]))
    for inputs in ([0.0, 0.0], [1.0, 5.0], [2.0, 6.0], [3.0, 4.0], [9.0, 9.0]):
        assert stumps(inputs) == pytest.approx(stumps.predict(np.array([inputs]))[0])
    assert stumps([1.0, 5.0]) == pytest.approx(-0.5 + 0.25 - 1.0 + 0.125)


def test_stumps_learn_what_the_first_stage_missed():
    rng = np.random.default_rng(1)
    count = rng.integers(0, 20, 400).astype(float)
    y = (count > 12).astype(float)
    # A first stage that knows nothing: the stumps must find the cut on the count.
    stumps = fit_stumps(np.column_stack([np.zeros(400), count]), y, np.zeros(400), rounds=30)
    scores = stumps.predict(np.column_stack([np.zeros(400), count]))
    assert scores[y == 1].min() > scores[y == 0].max()
    assert set(stumps.feature.tolist()) == {1}


def test_averaged_stumps_score_the_mean_of_their_parts():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(300, 3))
    y = (inputs[:, 1] + 0.5 * inputs[:, 2] > 0).astype(float)
    parts = [fit_stumps(inputs, y, np.zeros(300), rounds=20, quantiles=q) for q in (8, 12, 32)]
    # Grids this different pick different cuts: otherwise the mean would equal each part.
    assert len({tuple(p.threshold.tolist()) for p in parts}) == 3
    mean = Stumps.average(parts)
    assert mean.predict(inputs) == pytest.approx(sum(p.predict(inputs) for p in parts) / 3)
    for row in inputs[:20]:
        assert mean(row.tolist()) == pytest.approx(sum(p(row.tolist()) for p in parts) / 3)


def test_artifact_from_another_feature_version_is_refused(tmp_path):
    model = SpamModel.load()
    stale = SpamModel(model.weights, model.bias, model.nb_weights, model.gram_nb_weights, model.stumps,
                      model.threshold,
                      {**model.meta, "feature_version": FEATURE_VERSION + 1})
    stale.save(tmp_path / "stale.npz")
    with pytest.raises(ValueError, match="retrain"):
        SpamModel.load(tmp_path / "stale.npz")


def test_naive_bayes_weighs_tokens_by_the_class_they_appear_in():
    # Columns 1: spam only, 2: ham only, 3: both alike, 4: never seen.
    x = Matrix.from_rows([[1, 3], [1, 3], [2, 3], [2, 3]])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    w = fit_nb(x, y, alpha=0.001)
    assert w.shape == (DIM,)
    assert w[1] > 5 and w[2] < -5 and w[1] == pytest.approx(-w[2])
    assert w[3] == pytest.approx(0.0) and w[4] == pytest.approx(0.0)


def test_bayes_groups_split_body_subject_sender_and_structure():
    msg = parse(plain_message(subject="Quarterly figures", body="kernel patch attached"))
    all_ids, groups, with_grams, text_grams = grouped_features(msg)
    assert len(groups) == len(NB_GROUPS) and all_ids == features(msg)
    body, subject, sender, structure, markup = (set(g) for g in groups)
    assert {_index("kernel"), _index("patch")} <= body
    assert _index("s:quarterly") in subject and _index("s:quarterly") not in body
    assert _index("ct:text/plain") in structure and _index("kernel") not in structure
    assert _index("frd:example.org") in sender and _index("frd:example.org") not in structure
    assert not markup  # a plain-text message
    assert set(all_ids) == body | subject | sender | structure
    grams = {_index("c4:" + g) for g in ("kern", "patc", "el p", "h at", "ched")}
    assert grams <= set(with_grams) and set(all_ids) < set(with_grams)
    assert grams <= set(text_grams) and not set(all_ids) & set(text_grams)
    assert not grams & set(all_ids)


def test_character_grams_read_the_text_and_its_closing_part_with_white_space_as_one_space():
    def grams(*texts: str) -> set[int]:
        return {_index("c4:" + t) for t in texts}

    for ids in gram_ids("free\n\n  offer"):
        assert set(ids) == grams("free", "ree ", "ee o", "e of", " off", "offe", "ffer")
    every, closing = gram_ids("zzzz" + "a" * GRAM_CHARS)
    assert closing == [_index("c4:aaaa")] * (GRAM_CHARS - 3)  # they begin with the last GRAM_CHARS
    assert every[:4] == [_index("c4:" + g) for g in ("zzzz", "zzza", "zzaa", "zaaa")] and every[4:] == closing
    assert gram_ids("abc") == ([], [])
    # Scripts train.tsv's ham never uses are left out, as for every other token.
    for ids in gram_ids("hi \u3053\u3093\u306b\u3061\u306f there"):
        assert set(ids) == grams(" the", "ther", "here")
    # ... also inside the closing part, which still ends where the text does.
    every, closing = gram_ids("a" * GRAM_CHARS + "\u3053bbbb")
    assert closing == [_index("c4:aaaa")] * (GRAM_CHARS - 8) + [_index("c4:bbbb")]
    assert every == [_index("c4:aaaa")] * (GRAM_CHARS - 3) + [_index("c4:bbbb")]
    for ids in gram_ids("caf\u00e9 cr\u00e8me"):
        assert set(ids) == grams("caf\u00e9", "af\u00e9 ", "f\u00e9 c", "\u00e9 cr", " cr\u00e8", "cr\u00e8m",
                                 "r\u00e8me")


def test_row_means_of_empty_rows_are_zero():
    # Empty rows last and in the middle: a message without body words, say.
    x = Matrix.from_rows([[1, 2], [], [3], []])
    w = np.zeros(DIM)
    w[1], w[2], w[3] = 1.0, 3.0, -4.0
    assert x.row_means(w).tolist() == [2.0, 0.0, -4.0, 0.0]


def test_dot_of_empty_rows_is_zero():
    x = Matrix.from_rows([[1, 2], [], [3], []])
    w = np.zeros(DIM)
    w[1], w[2], w[3] = 1.0, 3.0, -4.0
    # Rows are scaled by 1/sqrt(len): [1, 2] -> (1 + 3) / sqrt(2).
    assert np.allclose(x.dot(w), [4 / np.sqrt(2), 0.0, -4.0, 0.0])


def test_a_row_weight_counts_a_message_as_often_as_repeating_it():
    rng = np.random.default_rng(3)
    rows = [sorted(rng.choice(50, size=8, replace=False).tolist()) for _ in range(30)]
    y = np.array([float(i % 3 == 0) for i in range(30)])
    weight = np.where(np.arange(30) % 5 == 1, 4.0, 1.0)
    repeated = np.repeat(np.arange(30), weight.astype(int))
    x = Matrix.from_rows(rows)
    w_weighted, b_weighted = fit(x, y, np.zeros(30), 1e-3, 50, weight)
    w_repeated, b_repeated = fit(x.take(repeated), y[repeated], np.zeros(len(repeated)), 1e-3, 50)
    w_plain, _ = fit(x, y, np.zeros(30), 1e-3, 50)
    assert np.allclose(w_weighted, w_repeated) and b_weighted == pytest.approx(b_repeated)
    assert not np.allclose(w_weighted, w_plain)


def test_the_regression_counts_hard_ham_more_and_the_artifact_says_so():
    mail = [Example(f"{i:064x}", spam, group, plain_message(body=f"words {i}"))
            for i, (spam, group) in enumerate([(True, "spam"), (False, "easy_ham"), (False, "hard_ham")])]
    assert prepare(mail).rows.weight.tolist() == [1.0, 1.0, HARD_HAM_WEIGHT]
    assert SpamModel.load().meta["hyperparameters"]["hard_ham_weight"] == {"hard_ham": HARD_HAM_WEIGHT}


def test_training_is_reproducible_and_learns(tmp_path):
    manifest, data = training_corpus(tmp_path)
    quiet = lambda line: None  # noqa: E731
    m1, report = run_training(manifest, data, tmp_path / "a.npz", log=quiet, iterations=60)
    # Folds fitted in worker processes give the same artifact as folds fitted in turn.
    m2, _ = run_training(manifest, data, tmp_path / "b.npz", log=quiet, iterations=60, processes=2)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert report.spam == 20 and report.ham == 20 and report.spam_caught_at_half == 1.0
    assert [op.budget for op in report.operating_points] == list(REPORTED_FPRS)
    # Word lists this clean separate well even with cuts chosen by inner folds of 32 messages.
    assert all(op.nested_caught >= 0.9 and op.nested_flagged <= 0.1 for op in report.operating_points)
    loaded = SpamModel.load(tmp_path / "a.npz")
    spammy = loaded.logit(parse(plain_message(body=" ".join(SPAM_WORDS))))
    hammy = loaded.logit(parse(plain_message(body=" ".join(HAM_WORDS))))
    assert spammy > 0 > hammy
    assert loaded.meta["trained_on"]["messages"] == 40


def test_training_uses_the_folds_it_is_asked_for(tmp_path):
    manifest, data = training_corpus(tmp_path)
    lines: list[str] = []
    model, report = run_training(manifest, data, None, log=lines.append, iterations=20, n_folds=4)
    assert report.folds == 4 and model.meta["hyperparameters"]["folds"] == 4
    assert "  4-fold out-of-fold scores done" in [line.split(" (")[0] for line in lines]
    assert [line for line in lines if "nested fold" in line][-1] == "  nested fold 4/4 done"


def test_missing_manifest_messages_are_an_error(tmp_path):
    manifest, data = training_corpus(tmp_path)
    manifest.write_text(manifest.read_text() + "0" * 64 + "\tspam\tspam\n")
    with pytest.raises(FileNotFoundError, match="1 of 41"):
        run_training(manifest, data, None, log=lambda line: None, iterations=5)


def test_threshold_keeps_false_positives_within_target():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(-3, 1, 2000), rng.normal(3, 1, 1000)])
    y = np.concatenate([np.zeros(2000), np.ones(1000)])
    cut = choose_threshold(scores, y, 0.001)
    assert (scores[y == 0] >= cut).sum() <= 2


def test_fold_partitions_differ_by_salt_and_keep_the_default():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    shipped = [fold_of(s, 5) for s in shas]
    other = [fold_of(s, 5, "p1") for s in shas]
    # The default salt is the one the shipped model's figures were measured with.
    assert shipped == [int(hashlib.sha256(b"fold:" + s.encode()).hexdigest()[:8], 16) % 5 for s in shas]
    assert set(other) == set(range(5))
    assert sum(a != b for a, b in zip(shipped, other)) > 300
