"""Twenty MCP servers' tool definitions, after the reference servers and
well-known community ones (descriptions and input schemas as those servers
publish them, shortened where they run to pages), served by the echo cell:
the catalogue tests (test_catalogue.py) and its benchmark
(tools/bench/catalogue_bench.py) register them as twenty cells, so that
tools/list has the size it would have with twenty real servers."""
import json
from pathlib import Path


def s(desc=None, **kw):
    """A string property."""
    p = {"type": "string", **kw}
    if desc:
        p["description"] = desc
    return p


def i(desc=None, **kw):
    p = {"type": "integer", **kw}
    if desc:
        p["description"] = desc
    return p


def b(desc=None):
    p = {"type": "boolean"}
    if desc:
        p["description"] = desc
    return p


def arr(items, desc=None):
    p = {"type": "array", "items": items}
    if desc:
        p["description"] = desc
    return p


def tool(name, description, props, required=(), title=None, read_only=None):
    t = {"name": name, "description": description,
         "inputSchema": {"type": "object", "properties": props, "required": list(required)}}
    if title:
        t["title"] = title
    if read_only is not None:
        t["annotations"] = {"readOnlyHint": read_only, "openWorldHint": not read_only}
    return t


OWNER = s("Repository owner (username or organization)")
REPO = s("Repository name")
PATH = s("Path of the file or directory")

SERVERS = {
    "github": ("GitHub: repositories, issues, pull requests and code search through the GitHub API.", [
        tool("github_create_issue", "Create a new issue in a GitHub repository.",
             {"owner": OWNER, "repo": REPO, "title": s("Issue title"), "body": s("Issue body"),
              "assignees": arr(s(), "Usernames to assign to this issue"), "labels": arr(s(), "Labels to apply"),
              "milestone": i("Milestone number to associate")}, ["owner", "repo", "title"], title="Create issue"),
        tool("github_list_issues", "List issues in a GitHub repository with filtering options.",
             {"owner": OWNER, "repo": REPO, "state": s("Filter by state", enum=["open", "closed", "all"]),
              "labels": arr(s(), "Filter by labels"), "sort": s("Sort by", enum=["created", "updated", "comments"]),
              "direction": s("Sort direction", enum=["asc", "desc"]), "since": s("Filter by date (ISO 8601)"),
              "page": i("Page number"), "per_page": i("Results per page (max 100)")}, ["owner", "repo"],
             read_only=True),
        tool("github_create_pull_request", "Create a new pull request in a GitHub repository.",
             {"owner": OWNER, "repo": REPO, "title": s("Pull request title"), "body": s("Pull request body"),
              "head": s("The name of the branch where your changes are implemented"),
              "base": s("The name of the branch you want the changes pulled into"),
              "draft": b("Whether to create the pull request as a draft"),
              "maintainer_can_modify": b("Whether maintainers can modify the pull request")},
             ["owner", "repo", "title", "head", "base"]),
        tool("github_get_file_contents", "Get the contents of a file or directory from a GitHub repository.",
             {"owner": OWNER, "repo": REPO, "path": PATH, "branch": s("Branch to get contents from")},
             ["owner", "repo", "path"], read_only=True),
        tool("github_search_code", "Search for code across GitHub repositories.",
             {"q": s("Search query using GitHub code search syntax"), "sort": s("Sort field", enum=["indexed"]),
              "order": s("Sort order", enum=["asc", "desc"]), "per_page": i("Results per page", minimum=1, maximum=100),
              "page": i("Page number", minimum=1)}, ["q"], read_only=True),
        tool("github_create_branch", "Create a new branch in a GitHub repository.",
             {"owner": OWNER, "repo": REPO, "branch": s("Name for the new branch"),
              "from_branch": s("Optional: source branch to create from (defaults to the repository's default branch)")},
             ["owner", "repo", "branch"]),
    ]),
    "gitlab": ("GitLab: projects, merge requests and issues through the GitLab API.", [
        tool("gitlab_create_merge_request", "Create a new merge request in a GitLab project.",
             {"project_id": s("Project ID or URL-encoded path"), "title": s("Merge request title"),
              "description": s("Merge request description"), "source_branch": s("Branch containing changes"),
              "target_branch": s("Branch to merge into"), "draft": b("Create as draft merge request"),
              "allow_collaboration": b("Allow commits from upstream members")},
             ["project_id", "title", "source_branch", "target_branch"]),
        tool("gitlab_create_issue", "Create a new issue in a GitLab project.",
             {"project_id": s("Project ID or URL-encoded path"), "title": s("Issue title"),
              "description": s("Issue description"), "assignee_ids": arr(i(), "Array of user IDs to assign"),
              "labels": arr(s(), "Array of label names"), "milestone_id": i("Milestone ID to assign")},
             ["project_id", "title"]),
        tool("gitlab_search_repositories", "Search for GitLab projects.",
             {"search": s("Search query"), "page": i("Page number for pagination (default: 1)"),
              "per_page": i("Number of results per page (default: 20)")}, ["search"], read_only=True),
        tool("gitlab_get_file_contents", "Get the contents of a file or directory from a GitLab project.",
             {"project_id": s("Project ID or URL-encoded path"), "file_path": s("Path to the file or directory"),
              "ref": s("Branch/tag/commit to get contents from")}, ["project_id", "file_path"], read_only=True),
        tool("gitlab_fork_repository", "Fork a GitLab project to your account or specified namespace.",
             {"project_id": s("Project ID or URL-encoded path"), "namespace": s("Namespace to fork to (full path)")},
             ["project_id"]),
    ]),
    "filesystem": ("Secure file operations on the directories the server was started with.", [
        tool("fs_read_text_file", "Read the complete contents of a file from the file system as text. Handles "
             "various text encodings and provides detailed error messages if the file cannot be read. Use this tool "
             "when you need to examine the contents of a single file. Use the 'head' parameter to read only the "
             "first N lines of a file, or the 'tail' parameter to read only the last N lines of a file. Only works "
             "within allowed directories.",
             {"path": s(), "tail": {"type": "number", "description": "If provided, returns only the last N lines"},
              "head": {"type": "number", "description": "If provided, returns only the first N lines"}}, ["path"],
             read_only=True),
        tool("fs_write_file", "Create a new file or completely overwrite an existing file with new content. Use "
             "with caution as it will overwrite existing files without warning. Handles text content with proper "
             "encoding. Only works within allowed directories.", {"path": s(), "content": s()}, ["path", "content"]),
        tool("fs_edit_file", "Make line-based edits to a text file. Each edit replaces exact line sequences with "
             "new content. Returns a git-style diff showing the changes made. Only works within allowed "
             "directories.",
             {"path": s(), "edits": arr({"type": "object", "properties": {
                 "oldText": s("Text to search for - must match exactly"), "newText": s("Text to replace with")},
                 "required": ["oldText", "newText"]}),
              "dryRun": b("Preview changes using git-style diff format")}, ["path", "edits"]),
        tool("fs_list_directory", "Get a detailed listing of all files and directories in a specified path. "
             "Results clearly distinguish between files and directories with [FILE] and [DIR] prefixes. This tool is "
             "essential for understanding directory structure and finding specific files within a directory. Only "
             "works within allowed directories.", {"path": s()}, ["path"], read_only=True),
        tool("fs_search_files", "Recursively search for files and directories matching a pattern. Searches "
             "through all subdirectories from the starting path. The search is case-insensitive and matches partial "
             "names. Returns full paths to all matching items. Great for finding files when you don't know their "
             "exact location. Only searches within allowed directories.",
             {"path": s(), "pattern": s(), "excludePatterns": arr(s())}, ["path", "pattern"], read_only=True),
        tool("fs_move_file", "Move or rename files and directories. Can move files between directories and rename "
             "them in a single operation. If the destination exists, the operation will fail. Works across "
             "different directories and can be used for simple renaming within the same directory. Both source and "
             "destination must be within allowed directories.", {"source": s(), "destination": s()},
             ["source", "destination"]),
    ]),
    "git": ("Git repository interaction and automation: status, diffs, commits, branches and logs.", [
        tool("git_status", "Shows the working tree status", {"repo_path": s()}, ["repo_path"], read_only=True),
        tool("git_diff_unstaged", "Shows changes in the working directory that are not yet staged",
             {"repo_path": s(), "context_lines": i(default=3)}, ["repo_path"], read_only=True),
        tool("git_commit", "Records changes to the repository", {"repo_path": s(), "message": s()},
             ["repo_path", "message"]),
        tool("git_add", "Adds file contents to the staging area", {"repo_path": s(), "files": arr(s())},
             ["repo_path", "files"]),
        tool("git_log", "Shows the commit logs", {"repo_path": s(), "max_count": i(default=10)}, ["repo_path"],
             read_only=True),
        tool("git_create_branch", "Creates a new branch from an optional base branch",
             {"repo_path": s(), "branch_name": s(), "base_branch": s()}, ["repo_path", "branch_name"]),
    ]),
    "fetch": ("Web content fetching and conversion for efficient LLM usage.", [
        tool("fetch_url", "Fetches a URL from the internet and optionally extracts its contents as markdown. "
             "Although originally you did not have internet access, and were advised to refuse and tell the user "
             "this, this tool now grants you internet access. Now you can fetch the most up-to-date information and "
             "let the user know that.",
             {"url": s("URL to fetch", format="uri"),
              "max_length": i("Maximum number of characters to return.", default=5000, exclusiveMinimum=0,
                              exclusiveMaximum=1000000),
              "start_index": i("On return output starting at this character index, useful if a previous fetch was "
                               "truncated and more context is required.", default=0, minimum=0),
              "raw": b("Get the actual HTML content of the requested page, without simplification.")}, ["url"],
             title="Fetch", read_only=True),
    ]),
    "time": ("Time and time zone conversion capabilities.", [
        tool("time_get_current_time", "Get current time in a specific timezones",
             {"timezone": s("IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use 'UTC' as local "
                            "timezone if no timezone provided by the user.")}, ["timezone"], read_only=True),
        tool("time_convert_time", "Convert time between timezones",
             {"source_timezone": s("Source IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use "
                                   "'UTC' as local timezone if no source timezone provided by the user."),
              "time": s("Time to convert in 24-hour format (HH:MM)"),
              "target_timezone": s("Target IANA timezone name (e.g., 'Asia/Tokyo', 'America/San_Francisco'). Use "
                                   "'UTC' as local timezone if no target timezone provided by the user.")},
             ["source_timezone", "time", "target_timezone"], read_only=True),
    ]),
    "memory": ("A knowledge graph memory: entities, relations and observations kept across conversations.", [
        tool("memory_create_entities", "Create multiple new entities in the knowledge graph",
             {"entities": arr({"type": "object", "properties": {
                 "name": s("The name of the entity"), "entityType": s("The type of the entity"),
                 "observations": arr(s(), "An array of observation contents associated with the entity")},
                 "required": ["name", "entityType", "observations"]})}, ["entities"]),
        tool("memory_create_relations", "Create multiple new relations between entities in the knowledge graph. "
             "Relations should be in active voice",
             {"relations": arr({"type": "object", "properties": {
                 "from": s("The name of the entity where the relation starts"),
                 "to": s("The name of the entity where the relation ends"),
                 "relationType": s("The type of the relation")}, "required": ["from", "to", "relationType"]})},
             ["relations"]),
        tool("memory_add_observations", "Add new observations to existing entities in the knowledge graph",
             {"observations": arr({"type": "object", "properties": {
                 "entityName": s("The name of the entity to add the observations to"),
                 "contents": arr(s(), "An array of observation contents to add")},
                 "required": ["entityName", "contents"]})}, ["observations"]),
        tool("memory_delete_entities", "Delete multiple entities and their associated relations from the knowledge "
             "graph", {"entityNames": arr(s(), "An array of entity names to delete")}, ["entityNames"]),
        tool("memory_read_graph", "Read the entire knowledge graph", {}, read_only=True),
        tool("memory_search_nodes", "Search for nodes in the knowledge graph based on a query",
             {"query": s("The search query to match against entity names, types, and observation content")},
             ["query"], read_only=True),
    ]),
    "sqlite": ("Database interaction and business intelligence on a SQLite database.", [
        tool("sqlite_read_query", "Execute a SELECT query on the SQLite database",
             {"query": s("SELECT SQL query to execute")}, ["query"], read_only=True),
        tool("sqlite_write_query", "Execute an INSERT, UPDATE, or DELETE query on the SQLite database",
             {"query": s("SQL query to execute")}, ["query"]),
        tool("sqlite_create_table", "Create a new table in the SQLite database",
             {"query": s("CREATE TABLE SQL statement")}, ["query"]),
        tool("sqlite_list_tables", "List all tables in the SQLite database", {}, read_only=True),
        tool("sqlite_describe_table", "Get the schema information for a specific table",
             {"table_name": s("Name of the table to describe")}, ["table_name"], read_only=True),
        tool("sqlite_append_insight", "Add a business insight to the memo",
             {"insight": s("Business insight discovered from data analysis")}, ["insight"]),
    ]),
    "postgres": ("Read-only access to a PostgreSQL database: schemas and queries.", [
        tool("postgres_query", "Run a read-only SQL query", {"sql": s()}, ["sql"], read_only=True),
        tool("postgres_list_schemas", "List the schemas of the database", {}, read_only=True),
        tool("postgres_list_objects", "List the tables, views and sequences of a schema",
             {"schema_name": s("Schema name"), "object_type": s("Object type", enum=["table", "view", "sequence"])},
             ["schema_name"], read_only=True),
        tool("postgres_explain_query", "Explain the execution plan of a SQL query, optionally with hypothetical "
             "indexes", {"sql": s("Query to explain"), "analyze": b("Run the query to get real statistics")},
             ["sql"], read_only=True),
        tool("postgres_analyze_db_health", "Analyze the database's health: indexes, connections, vacuum, buffer "
             "cache, constraints and sequences", {"health_type": s("Checks to run, comma-separated, or 'all'")},
             read_only=True),
    ]),
    "slack": ("Slack workspace access: channels, messages, threads, reactions and users.", [
        tool("slack_list_channels", "List public or pre-defined channels in the workspace with pagination",
             {"limit": i("Maximum number of channels to return (default 100, max 200)", default=100),
              "cursor": s("Pagination cursor for next page of results")}, read_only=True),
        tool("slack_post_message", "Post a new message to a Slack channel",
             {"channel_id": s("The ID of the channel to post to"), "text": s("The message text to post")},
             ["channel_id", "text"]),
        tool("slack_reply_to_thread", "Reply to a specific message thread in Slack",
             {"channel_id": s("The ID of the channel containing the thread"),
              "thread_ts": s("The timestamp of the parent message in the format '1234567890.123456'. Timestamps in "
                             "the format without the period can be converted by adding the period such that 6 "
                             "numbers come after it."),
              "text": s("The reply text")}, ["channel_id", "thread_ts", "text"]),
        tool("slack_add_reaction", "Add a reaction emoji to a message",
             {"channel_id": s("The ID of the channel containing the message"),
              "timestamp": s("The timestamp of the message to react to"),
              "reaction": s("The name of the emoji reaction (without ::)")}, ["channel_id", "timestamp", "reaction"]),
        tool("slack_get_channel_history", "Get recent messages from a channel",
             {"channel_id": s("The ID of the channel"), "limit": i("Number of messages to retrieve (default 10)",
                                                                   default=10)}, ["channel_id"], read_only=True),
        tool("slack_get_users", "Get a list of all users in the workspace with their basic profile information",
             {"cursor": s("Pagination cursor for next page of results"),
              "limit": i("Maximum number of users to return (default 100, max 200)", default=100)}, read_only=True),
    ]),
    "brave": ("Web and local search using Brave's Search API.", [
        tool("brave_web_search", "Performs a web search using the Brave Search API, ideal for general queries, news, "
             "articles, and online content. Use this for broad information gathering, recent events, or when you "
             "need diverse web sources. Supports pagination, content filtering, and freshness controls. Maximum 20 "
             "results per request, with offset for pagination.",
             {"query": s("Search query (max 400 chars, 50 words)"),
              "count": {"type": "number", "description": "Number of results (1-20, default 10)", "default": 10},
              "offset": {"type": "number", "description": "Pagination offset (max 9, default 0)", "default": 0}},
             ["query"], read_only=True),
        tool("brave_local_search", "Searches for local businesses and places using Brave's Local Search API. Best "
             "for queries related to physical locations, businesses, restaurants, services, etc. Returns detailed "
             "information including business names and addresses, ratings and review counts, phone numbers and "
             "opening hours. Use this when the query implies 'near me' or mentions specific locations. "
             "Automatically falls back to web search if no local results are found.",
             {"query": s("Local search query (e.g. 'pizza near Central Park')"),
              "count": {"type": "number", "description": "Number of results (1-20, default 5)", "default": 5}},
             ["query"], read_only=True),
    ]),
    "maps": ("Location services, directions and place details through the Google Maps API.", [
        tool("maps_geocode", "Convert an address into geographic coordinates",
             {"address": s("The address to geocode")}, ["address"], read_only=True),
        tool("maps_reverse_geocode", "Convert coordinates into an address",
             {"latitude": {"type": "number", "description": "Latitude coordinate"},
              "longitude": {"type": "number", "description": "Longitude coordinate"}}, ["latitude", "longitude"],
             read_only=True),
        tool("maps_search_places", "Search for places using Google Places API",
             {"query": s("Search query"),
              "location": {"type": "object", "properties": {"latitude": {"type": "number"},
                                                            "longitude": {"type": "number"}},
                           "description": "Optional center point for the search"},
              "radius": {"type": "number", "description": "Search radius in meters (max 50000)"}}, ["query"],
             read_only=True),
        tool("maps_place_details", "Get detailed information about a specific place",
             {"place_id": s("The place ID to get details for")}, ["place_id"], read_only=True),
        tool("maps_distance_matrix", "Calculate travel distance and time for multiple origins and destinations",
             {"origins": arr(s(), "Array of origin addresses or coordinates"),
              "destinations": arr(s(), "Array of destination addresses or coordinates"),
              "mode": s("Travel mode (driving, walking, bicycling, transit)",
                        enum=["driving", "walking", "bicycling", "transit"])}, ["origins", "destinations"],
             read_only=True),
        tool("maps_directions", "Get directions between two points",
             {"origin": s("Starting point address or coordinates"), "destination": s("Ending point address or "
                                                                                      "coordinates"),
              "mode": s("Travel mode (driving, walking, bicycling, transit)",
                        enum=["driving", "walking", "bicycling", "transit"])}, ["origin", "destination"],
             read_only=True),
    ]),
    "puppeteer": ("Browser automation: navigate, screenshot, click and fill pages in a headless browser.", [
        tool("puppeteer_navigate", "Navigate to a URL",
             {"url": s("URL to navigate to"), "launchOptions": {"type": "object", "description": "PuppeteerJS "
              "LaunchOptions. Default null. If changed and not null, browser restarts."},
              "allowDangerous": b("Allow dangerous LaunchOptions that reduce security.")}, ["url"]),
        tool("puppeteer_screenshot", "Take a screenshot of the current page or a specific element",
             {"name": s("Name for the screenshot"), "selector": s("CSS selector for element to screenshot"),
              "width": {"type": "number", "description": "Width in pixels (default: 800)"},
              "height": {"type": "number", "description": "Height in pixels (default: 600)"},
              "encoded": b("If true, capture the screenshot as a base64-encoded data URI instead of binary image "
                           "content.")}, ["name"]),
        tool("puppeteer_click", "Click an element on the page", {"selector": s("CSS selector for element to click")},
             ["selector"]),
        tool("puppeteer_fill", "Fill out an input field",
             {"selector": s("CSS selector for input field"), "value": s("Value to fill")}, ["selector", "value"]),
        tool("puppeteer_select", "Select an element on the page with Select tag",
             {"selector": s("CSS selector for element to select"), "value": s("Value to select")},
             ["selector", "value"]),
        tool("puppeteer_evaluate", "Execute JavaScript in the browser console", {"script": s("JavaScript code to "
                                                                                            "execute")}, ["script"]),
    ]),
    "sentry": ("Retrieve and analyze issues and events from Sentry.io.", [
        tool("sentry_get_issue", "Retrieve and analyze a Sentry issue by ID or URL. Use this tool when you need to: "
             "investigate production errors and crashes, access detailed stacktraces from Sentry, analyze error "
             "patterns and frequencies, get information about when issues first/last occurred, review error counts "
             "and status.", {"issue_id_or_url": s("Sentry issue ID or URL to analyze")}, ["issue_id_or_url"],
             read_only=True),
        tool("sentry_list_issues", "List the unresolved issues of a Sentry project, newest first",
             {"organization_slug": s("Organization slug"), "project_slug": s("Project slug"),
              "query": s("Sentry search query, e.g. 'is:unresolved level:error'")},
             ["organization_slug", "project_slug"], read_only=True),
        tool("sentry_resolve_issue", "Mark a Sentry issue as resolved", {"issue_id": s("Issue ID")}, ["issue_id"]),
        tool("sentry_list_releases", "List the releases of a Sentry project with their deploy and commit counts",
             {"organization_slug": s("Organization slug"), "project_slug": s("Project slug")},
             ["organization_slug", "project_slug"], read_only=True),
    ]),
    "gdrive": ("Google Drive: search, read and export files.", [
        tool("gdrive_search", "Search for files in Google Drive", {"query": s("Search query")}, ["query"],
             read_only=True),
        tool("gdrive_read_file", "Read the contents of a Google Drive file; Docs, Sheets and Slides are exported "
             "to Markdown, CSV and plain text", {"file_id": s("The ID of the file to read")}, ["file_id"],
             read_only=True),
        tool("gdrive_list_folder", "List the files in a Google Drive folder",
             {"folder_id": s("The ID of the folder; 'root' for My Drive"), "page_token": s("Next page token")},
             ["folder_id"], read_only=True),
        tool("gsheets_update_cell", "Update a cell value in a Google Spreadsheet",
             {"fileId": s("ID of the spreadsheet"), "range": s("Cell range in A1 notation (e.g. 'Sheet1!A1')"),
              "value": s("New cell value")}, ["fileId", "range", "value"]),
    ]),
    "redis": ("Redis key-value store: get, set, delete and list keys.", [
        tool("redis_set", "Set a Redis key-value pair with optional expiration",
             {"key": s("Redis key"), "value": s("Value to store"),
              "expireSeconds": {"type": "number", "description": "Optional expiration time in seconds"}},
             ["key", "value"]),
        tool("redis_get", "Get value by key from Redis", {"key": s("Redis key to retrieve")}, ["key"],
             read_only=True),
        tool("redis_delete", "Delete one or more keys from Redis",
             {"key": {"oneOf": [s(), arr(s())], "description": "Key or array of keys to delete"}}, ["key"]),
        tool("redis_list", "List Redis keys matching a pattern",
             {"pattern": s("Pattern to match keys (default: *)", default="*")}, read_only=True),
    ]),
    "aws_kb": ("Retrieve information from an AWS Knowledge Base using Bedrock Agent Runtime.", [
        tool("aws_kb_retrieve", "Performs retrieval from the AWS Knowledge Base using the provided query and "
             "Knowledge Base ID.",
             {"query": s("The query to perform retrieval on"), "knowledgeBaseId": s("The ID of the AWS Knowledge "
                                                                                  "Base"),
              "n": {"type": "number", "default": 3, "description": "Number of results to retrieve"}},
             ["query", "knowledgeBaseId"], read_only=True),
        tool("aws_kb_list_knowledge_bases", "List the knowledge bases of the account and their data sources", {},
             read_only=True),
    ]),
    "everart": ("AI image generation using various models.", [
        tool("everart_generate_image", "Generate images using EverArt Models and returns a clickable link to open "
             "the generated image. The tool will return both text and image content. Available models: 5000:FLUX1.1 "
             "(standard quality), 9000:FLUX1.1-ultra (ultra high quality), 6000:SD3.5 (Stable Diffusion 3.5), "
             "7000:Recraft-Real (photorealistic style), 8000:Recraft-Vector (vector art style).",
             {"prompt": s("Text description of desired image"),
              "model": s("Model ID (5000:FLUX1.1, 9000:FLUX1.1-ultra, 6000:SD3.5, 7000:Recraft-Real, "
                         "8000:Recraft-Vector)", default="5000"),
              "image_count": {"type": "number", "description": "Number of images to generate", "default": 1}},
             ["prompt"]),
    ]),
    "linear": ("Linear issue tracking: issues, projects, teams and comments.", [
        tool("linear_create_issue", "Creates a new Linear issue with the specified details. Use this to create "
             "tickets for tasks, bugs, or feature requests.",
             {"title": s("Issue title"), "teamId": s("Team ID"), "description": s("Issue description"),
              "priority": {"type": "number", "description": "Priority (0-4)"}, "status": s("Issue status")},
             ["title", "teamId"]),
        tool("linear_update_issue", "Updates an existing Linear issue's properties.",
             {"id": s("Issue ID"), "title": s("New title"), "description": s("New description"),
              "priority": {"type": "number", "description": "New priority (0-4)"}, "status": s("New status")},
             ["id"]),
        tool("linear_search_issues", "Searches Linear issues using flexible criteria. Supports filtering by any "
             "combination of: title/description text, team, status, assignee, labels, priority and estimate.",
             {"query": s("Optional text to search in title and description"), "teamId": s("Filter by team ID"),
              "status": s("Filter by status name (e.g., 'In Progress', 'Done')"),
              "assigneeId": s("Filter by assignee's user ID"), "labels": arr(s(), "Filter by label names"),
              "priority": {"type": "number", "description": "Filter by priority (1=urgent, 2=high, 3=normal, "
                           "4=low)"},
              "limit": {"type": "number", "description": "Max results to return (default: 10)"}}, read_only=True),
        tool("linear_add_comment", "Adds a comment to an existing Linear issue.",
             {"issueId": s("ID of the issue to comment on"), "body": s("Comment text in markdown format")},
             ["issueId", "body"]),
    ]),
    "jira": ("Atlassian Jira: issues, projects, transitions and JQL search.", [
        tool("jira_search", "Search Jira issues using JQL (Jira Query Language).",
             {"jql": s("JQL query string, e.g. 'project = PROJ AND status = \"In Progress\"'"),
              "fields": s("Comma-separated fields to return", default="summary,status,assignee"),
              "limit": i("Maximum number of results (1-50)", default=10, minimum=1, maximum=50)}, ["jql"],
             read_only=True),
        tool("jira_get_issue", "Get details of a specific Jira issue including its Epic links and relationship "
             "information.", {"issue_key": s("Jira issue key (e.g., 'PROJ-123')"),
                              "expand": s("Optional fields to expand, e.g. 'renderedFields,changelog'")},
             ["issue_key"], read_only=True),
        tool("jira_create_issue", "Create a new Jira issue with optional Epic link or parent for subtasks.",
             {"project_key": s("The JIRA project key (e.g. 'PROJ')"), "summary": s("Summary/title of the issue"),
              "issue_type": s("Issue type (e.g. 'Task', 'Bug', 'Story', 'Epic', 'Subtask')"),
              "assignee": s("Assignee's user identifier"), "description": s("Issue description")},
             ["project_key", "summary", "issue_type"]),
        tool("jira_transition_issue", "Transition a Jira issue to a new status.",
             {"issue_key": s("Jira issue key (e.g., 'PROJ-123')"), "transition_id": s("ID of the transition to "
                                                                                     "perform"),
              "comment": s("Optional comment to add during the transition")}, ["issue_key", "transition_id"]),
        tool("jira_add_comment", "Add a comment to a Jira issue.",
             {"issue_key": s("Jira issue key (e.g., 'PROJ-123')"), "comment": s("Comment text in Markdown")},
             ["issue_key", "comment"]),
    ]),
}


def manifests(echo, echo_sha256):
    """The twenty cell manifests (dicts), each serving its server's tools
    with the echo cell (which answers any tool with its `text` argument)."""
    out = []
    for name, (description, tools) in SERVERS.items():
        out.append({
            "name": f"srv-{name.replace('_', '-')}",
            "version": "1",
            "description": description,
            "executable": {"path": str(echo), "sha256": echo_sha256},
            "tools": tools,
            "limits": {"timeoutMilliseconds": 5000, "cpuSeconds": 2, "memoryMiB": 64, "openFiles": 16,
                       "fileSizeMiB": 0, "outputKiB": 256, "frameKiB": 256},
            "syscalls": {"groups": ["base"]},
            "sideEffects": "none",
        })
    return out


def write_manifests(directory, echo, echo_sha256):
    """Writes the twenty manifests into `directory`; returns their tool names."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = []
    for m in manifests(echo, echo_sha256):
        (d / f"{m['name']}.json").write_text(json.dumps(m, indent=1))
        names += [t["name"] for t in m["tools"]]
    return names
