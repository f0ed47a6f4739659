"""Library of the MultiCheXNet MONAI Label app: bundle loading, the infer task and the train task."""
