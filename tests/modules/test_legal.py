"""The legal module: the shared contract, plus enrichment of real CUAD contracts, parsing of
real CUAD questions, contract resolution and the filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.vectorstore import MatchAny
from modules.base import Candidate
from modules.legal import (
    PARTIES_KEY,
    TITLE_KEY,
    LegalModule,
    _filename_filer,
    clause_terms,
    match_parties,
    model_clause,
    parse_question,
)
from tests.modules.contract import ModuleContract, RecordingSearch, make_candidate

pytestmark = pytest.mark.unit

# The preamble and an audit clause of CUAD's 2TheMart.com co-branding agreement.
PREAMBLE = (
    "CO-BRANDING AND ADVERTISING AGREEMENT\n\nTHIS CO-BRANDING AND ADVERTISING AGREEMENT (the \"Agreement\") is made "
    "and entered into as of June 21, 1999 (the \"Effective Date\") by and between I-ESCROW, INC., a Nevada "
    "corporation with its principal place of business at 1730 S. Amphlett Blvd., San Mateo, CA 94402 "
    "(\"i-Escrow\"), and 2THEMART.COM, INC., a Nevada corporation with its principal place of business at 18301 "
    "Von Karman Avenue, Irvine, California 92612 (\"2TheMart\").\n\n1. DEFINITIONS.\n"
)
AUDIT = (
    "Once every twelve (12) months, 2TheMart through a CPA may inspect and audit such books and records of i-Escrow "
    "as relate to the transactions under this Agreement."
)
GOVERNING = "This Agreement shall be governed by the laws of the State of California."
META_ESCROW = {"title": "CO-BRANDING AND ADVERTISING AGREEMENT", "title_key": "co branding and advertising agreement",
               "party_keys": ["i escrow", "iescrow", "2themartcom"]}
META_GOLF = {"title": "ENDORSEMENT AGREEMENT", "title_key": "endorsement agreement", "party_keys": ["adams golf", "adamsgolf"]}
QUESTION = (
    "In the CO-BRANDING AND ADVERTISING AGREEMENT between I-ESCROW, INC. and 2THEMART.COM, INC.: Does a party have "
    "the right to audit the books, records, or physical locations of the counterparty to ensure compliance with the "
    "contract?"
)
KNOWN = {
    PARTIES_KEY: {"i escrow": 30, "iescrow": 30, "2themartcom": 30, "adams golf": 20, "adamsgolf": 20},
    TITLE_KEY: {"co branding and advertising agreement": 30, "endorsement agreement": 20},
}


class TestLegalModule(ModuleContract):
    module_key = "legal"
    sample_questions = [QUESTION, "Which state's law governs the distribution agreement?"]
    sample_document = (PREAMBLE + AUDIT, "cuad_2ThemartComInc_19990826_Co-Branding_Agreement.txt", {})

    def candidates(self) -> list[Candidate]:
        texts = [
            (AUDIT, META_ESCROW),
            (AUDIT, META_ESCROW),  # an exact duplicate
            (PREAMBLE, META_ESCROW),
            (GOVERNING, META_GOLF),
            ("The Consultant shall wear the Products in all tournaments.", META_GOLF),
        ]
        return [make_candidate(i, t, similarity=0.7 - 0.1 * i, meta=m) for i, (t, m) in enumerate(texts)]


@pytest.mark.parametrize(
    ("pattern", "title", "party_keys"),
    [
        ("cuad_2ThemartComInc*", "CO-BRANDING AND ADVERTISING AGREEMENT", {"iescrow", "2themartcom"}),
        ("cuad_ArcGroupInc_20171211*Sponsorship*", "Sponsorship Agreement", {"jacksonvillejaguars", "arcgroup"}),
        ("cuad_WARNERCHILCOTTPLC_12_31_2003*", "DEVELOPMENT AGREEMENT", {"leo pharma a s", "galen"}),
        ("cuad_ADAMSGOLFINC_03_21_2005*", "ENDORSEMENT AGREEMENT", {"adamsgolf"}),
    ],
)
def test_enrich_reads_title_and_parties_of_real_contracts(eval_dir: Path, pattern, title, party_keys) -> None:
    [path] = (eval_dir / "cuad" / "corpus").glob(pattern)
    meta = LegalModule().enrich(path.read_text(errors="replace"), path.name, {})
    assert meta["title"] == title
    assert party_keys <= set(meta["party_keys"])


@pytest.mark.parametrize(
    ("pattern", "title"),
    [
        # the heading indented by dozens of spaces, below the offering's cover lines
        ("cuad_BLUEROCKRESIDENTIALGROWTHREIT_INC_06_01_2016-EX-1.1-AGENCY_AGREEMENT.txt", "AGENCY AGREEMENT"),
        # no line of its own: "This JOINT CONTENT LICENSE AGREEMENT", not "... LICENSE"
        ("cuad_AlliedEsports*EX-10.19_Content_License_Agreement.txt", "JOINT CONTENT LICENSE AGREEMENT"),
        ("cuad_CardlyticsInc_*_Maintenance_Agreement1.txt", "SOFTWARE LICENSE, CUSTOMIZATION AND MAINTENANCE AGREEMENT"),
        # no agreement word, and a heading that only says which amendment
        ("cuad_FEDERATEDGOVERNMENT*_POWEROF.txt", "LIMITED POWER OF ATTORNEY"),
        ("cuad_FEDERATEDGOVERNMENT*_SECONDAMENDMENT.txt", "SECOND AMENDMENT TO SERVICES AGREEMENT"),
        # a sentence of the body ("Agreement in respect of the provision of ...") is not a name
        ("cuad_SMITHELECTRICVEHICLESCORP_04_04_2012-EX-10.26-FLEET_MAINTENANCE_AGREEMENT.txt", "FLEET MAINTENANCE AGREEMENT"),
    ],
)
def test_enrich_reads_titles_a_simple_heading_rule_misses(eval_dir: Path, pattern, title) -> None:
    [path] = (eval_dir / "cuad" / "corpus").glob(pattern)
    assert LegalModule().enrich(path.read_text(errors="replace"), path.name, {})["title"] == title


@pytest.mark.parametrize(
    ("pattern", "parties"),
    [
        # the name ends where the preamble's sentence goes on in lower case
        ("cuad_FOUNDATIONMEDICINE_INC_02_02_2015-EX-10.2-Collaboration_Agreement.txt",
         ["F. Hoffmann-La Roche Ltd", "Hoffmann-La Roche Inc.", "Foundation Medicine"]),
        ("cuad_NETGEAR_INC_04_21_2003-EX-10.16-AMENDMENT_TO_THE_DISTRIBUTOR*", ["NETGEAR"]),
        # "Distributor will be by INCOTERMS Ex-works" is no party: only the filer's name is stored
        ("cuad_GentechHoldings*Distributor_Agreement.txt", []),
    ],
)
def test_enrich_reads_party_names_not_the_sentence_around_them(eval_dir: Path, pattern, parties) -> None:
    [path] = (eval_dir / "cuad" / "corpus").glob(pattern)
    assert LegalModule().enrich(path.read_text(errors="replace"), path.name, {}).get("parties", []) == parties


def test_enrich_reads_date_and_governing_law(eval_dir: Path) -> None:
    [path] = (eval_dir / "cuad" / "corpus").glob("cuad_WARNERCHILCOTTPLC_12_31_2003*")
    meta = LegalModule().enrich(path.read_text(errors="replace"), path.name, {})
    assert meta["governing_law"].lower() == "state of new york"
    meta = LegalModule().enrich(PREAMBLE, "agreement.txt", {})
    assert meta["effective_date"] == "1999-06-21" and meta["agreement_type"] == "co branding"


@pytest.mark.parametrize(
    ("question", "title", "parties", "clause"),
    [
        (QUESTION, "CO-BRANDING AND ADVERTISING AGREEMENT", "I-ESCROW, INC. and 2THEMART.COM, INC.",
         "Does a party have the right to audit the books, records, or physical locations of the counterparty to "
         "ensure compliance with the contract?"),
        ("Which state's or country's law governs the ENDORSEMENT AGREEMENT between TOM WATSON and ADAMS GOLF, LTD.?",
         "ENDORSEMENT AGREEMENT", "TOM WATSON and ADAMS GOLF, LTD.", "Which state's or country's law governs"),
        ("What is the renewal term of the FRANCHISE AGREEMENT between Airsopure International Group, Inc. and [] after "
         "its initial term expires?", "FRANCHISE AGREEMENT", "Airsopure International Group, Inc. and []",
         "What is the renewal term"),
        ("On what date does the initial term of the FRANCHISE AGREEMENT involving Goosehead Insurance Agency, LLC "
         "expire?", "FRANCHISE AGREEMENT", "Goosehead Insurance Agency, LLC", "On what date does the initial term"),
        ("How much notice is required to terminate renewal of the AGENCY AGREEMENT between Mutual Insurance "
         "Corporation of America and Stratton, Cheeseman & Walsh-Nevada, Inc.?", "AGENCY AGREEMENT",
         "Mutual Insurance Corporation of America and Stratton, Cheeseman & Walsh-Nevada, Inc.",
         "How much notice is required to terminate renewal"),
    ],
)
def test_question_parser_splits_real_cuad_questions(question, title, parties, clause) -> None:
    assert parse_question(question) == {"title": title, "parties": parties, "clause": clause}


def test_a_question_without_a_contract_is_not_split() -> None:
    assert parse_question("Does a party have the right to audit the books?") is None


def test_clause_questions_get_contract_wording() -> None:
    assert "books and records" in clause_terms("Does a party have the right to audit the books?")
    assert "governed by" in clause_terms("Which state's or country's law governs")
    assert clause_terms("What colour is the sky?") == ""


def test_fetch_restricts_to_the_named_contract_and_searches_the_clause() -> None:
    module = LegalModule(LegalModule.config_model(model_clauses=False))
    query = module.analyze(QUESTION)
    search = RecordingSearch([make_candidate(0, AUDIT, meta=META_ESCROW)], values=KNOWN)
    module.fetch(query, search)
    [call] = search.calls
    assert call["filter"].must == [MatchAny(key=PARTIES_KEY, any=["2themartcom", "i escrow", "iescrow"])]
    # Within the contract, both rankings read the clause question and its contract wording,
    # not the contract's name and parties.
    keywords = call["sparse_text"]
    assert keywords.startswith("Does a party have the right to audit") and "books and records" in keywords
    assert "CO-BRANDING" not in keywords
    assert call["text"] == keywords


def test_within_the_contract_a_model_clause_stands_in_for_the_question() -> None:
    module = LegalModule()
    query = module.analyze(QUESTION)
    search = RecordingSearch([make_candidate(0, AUDIT, meta=META_ESCROW)], values=KNOWN)
    module.fetch(query, search)
    [call] = search.calls
    assert call["filter"].must == [MatchAny(key=PARTIES_KEY, any=["2themartcom", "i escrow", "iescrow"])]
    clause = parse_question(QUESTION)["clause"]
    model = model_clause(clause)
    assert call["text"] == model == query.notes["model_clause"]
    assert "audit and inspect such books and records" in model
    # BM25 reads the clause terms and the model clause, not the question's own words.
    assert call["sparse_text"] == f"{clause_terms(clause)} {model}"
    assert "counterparty" not in call["sparse_text"]


def test_a_clause_without_a_model_is_searched_with_the_clause_question() -> None:
    question = "In the CO-BRANDING AND ADVERTISING AGREEMENT between I-ESCROW, INC. and 2THEMART.COM, INC.: Is it signed in ink?"
    module = LegalModule()
    query = module.analyze(question)
    search = RecordingSearch([make_candidate(0, AUDIT, meta=META_ESCROW)], values=KNOWN)
    module.fetch(query, search)
    [call] = search.calls
    assert "model_clause" not in query.notes
    assert call["text"] == call["sparse_text"] == "Is it signed in ink?"


@pytest.mark.parametrize(
    ("clause", "model_words"),
    [
        # CUAD's own phrasings of the clause kinds whose patterns overlap: the specific kind wins.
        ("Does the contract contain a license grant by affiliates of the licensor or that includes intellectual "
         "property of affiliates of the licensor?", "Licensor and its Affiliates hereby grant"),
        ("Does the contract contain a license grant that is irrevocable or perpetual?", "perpetual, irrevocable"),
        ("Does the contract contain a license granted by one party to its counterparty?", "non-exclusive, non-transferable"),
        ("Is a party’s liability uncapped upon the breach of its obligation in the contract?", "shall not apply"),
        ("Does the contract include a cap on liability upon the breach of a party’s obligation?", "aggregate liability"),
        ("How much notice is required to terminate renewal?", "notice of non-renewal at least ninety"),
        ("What is the renewal term?", "automatically renew"),
        ("On what date does the initial term expire?", "initial term of five (5) years"),
        ("This category includes the exceptions or carveouts to Non-Compete, Exclusivity and No-Solicit of Customers "
         "above.", "Notwithstanding the foregoing restrictions"),
        ("Is there any clause providing for joint or shared ownership of intellectual property between the parties?",
         "jointly owned"),
        ("Is a party restricted from contesting the validity of the counterparty’s ownership of intellectual "
         "property?", "shall not contest or challenge"),
        ("Does the contract limit the ability of a party to transfer the license being granted to a third party?",
         "non-transferable and non-sublicensable"),
        ("Is there a restriction on a party’s soliciting or hiring employees and/or contractors from the counterparty?",
         "solicit for employment or hire"),
        ("Which state/country's law governs the interpretation of the contract?", "governed by and construed"),
        ("What colour is the logo?", None),
    ],
)
def test_each_clause_kind_gets_its_own_model_clause(clause: str, model_words: str | None) -> None:
    model = model_clause(clause)
    assert (model is None) if model_words is None else (model_words in model)


def test_within_the_contract_the_whole_question_can_be_searched() -> None:
    module = LegalModule(LegalModule.config_model(clause_only_within_contract=False))
    search = RecordingSearch([make_candidate(0, AUDIT, meta=META_ESCROW)], values=KNOWN)
    module.fetch(module.analyze(QUESTION), search)
    [call] = search.calls
    assert call["text"] == QUESTION and "books and records" in call["sparse_text"]


def test_a_party_matches_its_longest_stored_name_not_a_shorter_one_of_another_contract() -> None:
    # "payment" is a party key another contract's preamble produced; "adamsgolf" the filer's name
    known = {"payment": 3, "paymentdatasystems": 5, "network1financial": 5, "adamsgolf": 4}
    found = match_parties("NETWORK 1 FINANCIAL, INC. and Payment Data Systems, Inc.", known, 0.85)
    assert found == ["network1financial", "paymentdatasystems"]
    assert match_parties("AdamsGolfInc and Nick Faldo", known, 0.85) == ["adamsgolf"]


def test_a_date_the_preamble_states_is_searched_with_the_whole_question() -> None:
    question = "What is the agreement date of the CO-BRANDING AND ADVERTISING AGREEMENT between I-ESCROW, INC. and 2THEMART.COM, INC.?"
    module = LegalModule()
    search = RecordingSearch([make_candidate(0, AUDIT, meta=META_ESCROW)], values=KNOWN)
    module.fetch(module.analyze(question), search)
    [call] = search.calls
    assert call["filter"].must == [MatchAny(key=PARTIES_KEY, any=["2themartcom", "i escrow", "iescrow"])]
    assert call["text"] == question, "the preamble names the contract and its parties: they help rank it"
    assert "dated as of" in call["sparse_text"]


def test_a_title_alone_ranks_its_contracts_first_without_excluding_others() -> None:
    module = LegalModule()
    query = module.analyze("In the ENDORSEMENT AGREEMENT between NOBODY KNOWN and SOMEONE ELSE: Is there a non-compete?")
    by_title, other = make_candidate(0, GOVERNING, meta=META_GOLF), make_candidate(1, AUDIT, meta=META_ESCROW)
    search = RecordingSearch([by_title, other], values=KNOWN)
    candidates = module.fetch(query, search)
    [call] = search.calls
    assert call["filter"] is None and call["prefer"].must == [MatchAny(key=TITLE_KEY, any=["endorsement agreement"])]
    assert call["text"].startswith("In the ENDORSEMENT AGREEMENT"), "the contract is still to be found: whole question"
    assert query.notes["contract_preference"] == ["endorsement agreement"] and query.filter is None
    filtered = module.filter(query, module.normalize(query, candidates))
    assert all(c.kept for c in filtered), "a title-only match must not drop other contracts"


def test_fetch_searches_everything_when_no_contract_matches() -> None:
    module = LegalModule()
    query = module.analyze("In the SPACE AGREEMENT between NOBODY KNOWN and SOMEONE ELSE: Is there a non-compete?")
    search = RecordingSearch([], values=KNOWN)
    module.fetch(query, search)
    assert [c["filter"] for c in search.calls] == [None] and "whole collection" in query.notes["contract_filter"]


def test_filter_drops_other_contracts_with_a_reason() -> None:
    module = LegalModule()
    query = module.analyze(QUESTION)
    candidates = [make_candidate(0, AUDIT, meta=META_ESCROW), make_candidate(1, GOVERNING, meta=META_GOLF)]
    module.fetch(query, RecordingSearch(candidates, values=KNOWN))
    kept, dropped = module.filter(query, module.normalize(query, candidates))
    assert kept.kept and not dropped.kept
    assert dropped.reason == "contract 'ENDORSEMENT AGREEMENT' is not between the parties asked for"


def test_normalize_annotates_dates() -> None:
    module = LegalModule()
    [c] = module.normalize(module.analyze(QUESTION), [make_candidate(0, PREAMBLE)])
    assert "June 21, 1999 [= 1999-06-21]" in c.model_text and c.text == PREAMBLE


@pytest.mark.parametrize(
    ("filename", "filer"),
    [
        ("cuad_ADAMSGOLFINC_03_21_2005-EX-10.17-ENDORSEMENT AGREEMENT.txt", "adamsgolf"),
        ("cuad_BLUEROCKRESIDENTIALGROWTHREIT_INC_06_01_2016-EX-1.1-AGENCY_AGREEMENT.txt", "bluerockresidentialgrowthreit"),
        ("cuad_OLDAPIWIND-DOWNLTD_01_08_2016-EX-1.3-AGENCY_AGREEMENT2.txt", "oldapiwinddown"),
        ("cuad_PhotronicsInc_20171219_10-QA_EX-10.28_10982650_EX-10.28_Supply Agreement.txt", "photronics"),
        ("cuad_Antares_Pharma_Inc._-_Manufacturing_Agreement.txt", "antarespharma"),
        ("supply-agreement-final.txt", None),
    ],
)
def test_the_filer_is_read_from_an_exhibit_s_filename(filename: str, filer: str | None) -> None:
    assert _filename_filer(filename) == filer


def test_a_contract_without_a_between_clause_is_found_by_its_filer() -> None:
    """Bluerock's agency agreement names its parties in a letter, not "by and between": the
    filer in its filename is what the question's party names match."""
    module = LegalModule()
    name = "cuad_BLUEROCKRESIDENTIALGROWTHREIT_INC_06_01_2016-EX-1.1-AGENCY_AGREEMENT.txt"
    meta = module.enrich("AGENCY AGREEMENT\n\nMay 25, 2016\n\nDear Ladies and Gentlemen:", name, {})
    query = module.analyze(
        "In the AGENCY AGREEMENT between Bluerock Residential Growth REIT, Inc. and Bluerock Residential Holdings, "
        "L.P.: Is consent or notice required of a party if the contract is assigned to a third party?"
    )
    known = {PARTIES_KEY: {key: 1 for key in meta["party_keys"]}}
    search = RecordingSearch([make_candidate(0, "Assignment.", meta=meta)], values=known)
    module.fetch(query, search)
    assert search.calls[0]["filter"].must[0].any == ["bluerockresidentialgrowthreit"]
