"""Who plays whom: matchmakers turn a step's prompts into a MatchPlan; ``games`` pairs the answers."""
