"""Zero-shot labelling: label sets, scores per image and label, label assignment and exports."""
