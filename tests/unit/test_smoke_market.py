from tests.market import Market


def test_a_granted_market_builds(market: Market) -> None:
    listing_id, trade_id, grant_id = market.granted()
    assert market.head > 0
