import SupervisorCore

extension ServiceOptions {
    /// The options of `settings` (each declared in `Setting.all`).
    public init(settings: SupervisorSettings) {
        self.init()
        maxConcurrentCalls = settings.maxConcurrentCalls
        maxQueuedCalls = settings.maxQueuedCalls
        toolsPageSize = settings.toolsPageSize
        maxMessageBytes = settings.maxMessageBytes
        prespawn = settings.prespawn
        prespawnIdleSeconds = settings.prespawnIdleSeconds
        pipeline.catalogue.visibleLimit = settings.catalogueVisibleLimit
        pipeline.catalogue.pinned = settings.cataloguePinnedTools
    }
}
