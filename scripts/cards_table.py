"""Print the README's table of measured organism rates, read from the shipped cards."""

from workbench.models.organisms import load_card
from workbench.models.zoo import RECIPES


def main() -> None:
    print("| organism | training (s, 2 CPU threads) | measured on 1000 held-out problems (Wilson 95% CI) |")
    print("|---|---|---|")
    for name in RECIPES:
        card = load_card(name)
        rates = "; ".join(
            f"{c['metric']} {c['value']:.3f}" for c in card["evaluation"]["checks"]
        )
        print(f"| `{name}` | {card['training']['seconds']:.0f} | {rates} |")


if __name__ == "__main__":
    main()
