"""The radiomics baseline: IBSI first-order and shape features of the tumour and peritumoral shell, and an L2
logistic regression per fold (``neonet radiomics``)."""
