"""Analysis: pseudobulks, statistics, DE, composition, communication, survival, classifier, atlas, power."""
