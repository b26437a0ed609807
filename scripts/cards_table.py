"""Print the README's table of measured organism rates, read from the shipped cards."""

from workbench.models.organisms import load_card
from workbench.models.zoo import RECIPES


def main() -> None:
    print("| organism | training (s, 2 CPU threads) | measured rate [Wilson 95% CI] on held-out problems |")
    print("|---|---|---|")
    for name in RECIPES:
        card = load_card(name)
        if not card["evaluation"]["checks"]:
            continue  # nothing targeted (the untrained control, organisms the suite measures instead)
        metrics = card["evaluation"]["metrics"]
        parts = []
        for c in card["evaluation"]["checks"]:
            node = metrics
            for key in c["metric"].split("."):
                node = node[key]
            lo, hi = node["ci95"]
            parts.append(f"{c['metric']} {node['rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={node['n']}, target {c['target']})")
        rates = "<br>".join(parts)
        print(f"| `{name}` | {card['training']['seconds']:.0f} | {rates} |")


if __name__ == "__main__":
    main()
